"""Who writes a massive activation: the block, the sub-layer, and the weight entries (super weights).

For a site (token, dim) the block whose update `output - input` moves the value most toward its final
sign is the *jump block*. Hooks on that block's own attention and MLP modules give each sub-layer's
update as the block adds it (its output); whatever the two do not explain (e.g. a norm after a
sub-layer) is reported as `other`. Inside the sub-layer that carries the jump, the last Linear whose
output size is the hidden size (the MLP down-projection) is `y = W x + b`, so
`y[dim] = sum_j W[dim, j] * x[j] + b[dim]`: each term is one weight entry's contribution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from massact.capture.hooks import forward_hooks, forward_pre_hook, output_tensor
from massact.errors import MassactError
from massact.models.structure import Structure
from massact.trace.linear import WriterLinear, find_writer_linear

SUBLAYERS = ("attention", "mlp")
MAX_ENTRIES = 256  # entries listed at most, even when more are needed to reach the share


@dataclass
class WeightEntry:
    """One weight entry W[row, column] of a writer Linear and what it adds to the site."""

    block: int
    module: str
    parameter: str
    row: int  # output feature = the massive dim
    column: int  # input channel
    stored_index: list[int]  # index into `parameter` (differs from [row, column] for Conv1D)
    weight: float
    input: float  # x[column] on the site's token
    input_ratio: float  # |x[column]| / median over the sequence's tokens of |x[column]|
    contribution: float  # weight * input
    share_of_update: float  # contribution / (the Linear's output at the site - its bias)
    share_of_jump: float  # contribution / the block's jump at the site
    cumulative_share_of_jump: float
    weight_rank: int  # rank of |weight| among all entries of the matrix (1 = largest)
    weight_ratio: float  # |weight| / median |W|
    weight_sigma: float  # |weight - mean(W)| / std(W)


@dataclass
class SiteTrace:
    """The writer of one massive site."""

    token: int
    token_text: str
    token_kind: str
    dim: int
    block: int  # the jump block
    value_in: float
    value_out: float
    attention_update: float
    mlp_update: float
    other_update: float
    writer: str | None  # "attention" or "mlp"
    module: str | None
    module_output: float | None
    bias: float
    share: float  # the target share for `entries_needed`
    entries_needed: dict[str, int | None]  # fewest top entries that explain `share` of the jump / update
    entries: list[WeightEntry]
    channels: list[dict]  # the input channels with the largest |x| on the token
    trajectory: list[float]  # the site's value at every block output
    peak_block: int
    peak_value: float
    note: str = ""

    @property
    def jump(self) -> float:
        return self.value_out - self.value_in

    def to_json(self) -> dict:
        data = asdict(self)
        data["jump"] = self.jump
        return data


@dataclass
class _Capture:
    """What the hooks keep: vectors at the traced tokens only, plus per-channel medians."""

    tokens: list[int] = field(default_factory=list)
    block_in: dict[int, torch.Tensor] = field(default_factory=dict)
    block_out: dict[int, torch.Tensor] = field(default_factory=dict)
    update: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    writer_in: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    writer_median: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    writer_out: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)


def _first_sequence(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[0] if tensor.dim() == 3 else tensor


def writer_linears(structure: Structure, block: int, hidden_size: int) -> dict[str, WriterLinear | None]:
    """The writer Linear of the block's attention and of its MLP (None where there is none)."""
    return {
        "attention": find_writer_linear(structure.attn(block), structure.attn_path(block), hidden_size),
        "mlp": find_writer_linear(structure.mlp(block), structure.mlp_path(block), hidden_size),
    }


@contextmanager
def _capture_hooks(structure: Structure, tokens: list[int], hidden_size: int, capture: _Capture) -> Iterator[None]:
    index = torch.tensor(tokens)

    def at_tokens(tensor: torch.Tensor) -> torch.Tensor:
        x = _first_sequence(tensor.detach())
        return x[index.to(x.device)].float().cpu()

    def block_pre(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                capture.block_in[i] = at_tokens(hidden)

        return hook

    def block_post(i: int):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            capture.block_out[i] = at_tokens(output_tensor(output))

        return hook

    def update_post(key: tuple[int, str]):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            capture.update[key] = at_tokens(output_tensor(output))

        return hook

    def writer_pre(key: tuple[int, str]):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = _first_sequence(args[0].detach())
            capture.writer_in[key] = at_tokens(x)
            capture.writer_median[key] = x.float().abs().median(dim=0).values.cpu()

        return hook

    def writer_post(key: tuple[int, str]):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            capture.writer_out[key] = at_tokens(output_tensor(output))

        return hook

    post: list[tuple[nn.Module, object]] = []
    with ExitStack() as stack:
        for i, block in enumerate(structure.blocks):
            stack.enter_context(forward_pre_hook(block, block_pre(i)))
            post.append((block, block_post(i)))
            parts = {"attention": structure.attn(i), "mlp": structure.mlp(i)}
            for name, writer in writer_linears(structure, i, hidden_size).items():
                if parts[name] is not None:
                    post.append((parts[name], update_post((i, name))))
                if writer is not None:
                    stack.enter_context(forward_pre_hook(writer.module, writer_pre((i, name))))
                    post.append((writer.module, writer_post((i, name))))
        stack.enter_context(forward_hooks(post))
        yield


def _needed(contributions: torch.Tensor, total: float, share: float) -> int | None:
    """Fewest entries, largest signed contribution first, whose sum reaches `share` of `total`."""
    if total == 0 or not math.isfinite(total):
        return None
    cumulative = torch.cumsum(contributions * math.copysign(1.0, total), 0) / abs(total)
    reached = (cumulative >= share).nonzero()
    return int(reached[0]) + 1 if reached.numel() else None


def _contributions(writer: WriterLinear, x: torch.Tensor, dim: int, update: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every entry's contribution W[dim, j] * x[j], and the columns ordered by signed contribution to `update`."""
    row = writer.matrix()[dim].detach().double().cpu()
    contributions = row * x.double()
    sign = math.copysign(1.0, update) if update else 1.0
    return contributions, torch.argsort(contributions * sign, descending=True, stable=True)


def _entries(
    block: int,
    writer: WriterLinear,
    x: torch.Tensor,
    medians: torch.Tensor,
    dim: int,
    columns: torch.Tensor,
    contributions: torch.Tensor,
    update: float,
    jump: float,
) -> list[WeightEntry]:
    matrix = writer.matrix().detach().float().cpu()
    flat = matrix.abs().reshape(-1)
    median_w = float(flat.median())
    mean_w, std_w = float(matrix.mean()), float(matrix.std())
    cumulative = 0.0
    entries = []
    for column in columns.tolist():
        weight = float(matrix[dim, column])
        value = float(x[column])
        med = float(medians[column])
        contribution = float(contributions[column])
        cumulative += contribution
        entries.append(
            WeightEntry(
                block=block,
                module=writer.name,
                parameter=f"{writer.name}.weight",
                row=dim,
                column=column,
                stored_index=list(writer.stored_index(dim, column)),
                weight=weight,
                input=value,
                input_ratio=abs(value) / med if med > 0 else math.inf,
                contribution=contribution,
                share_of_update=contribution / update if update else math.nan,
                share_of_jump=contribution / jump if jump else math.nan,
                cumulative_share_of_jump=cumulative / jump if jump else math.nan,
                weight_rank=int((flat > abs(weight)).sum()) + 1,
                weight_ratio=abs(weight) / median_w if median_w > 0 else math.inf,
                weight_sigma=abs(weight - mean_w) / std_w if std_w > 0 else math.inf,
            )
        )
    return entries


def jump_block(trajectory_in: list[float], trajectory_out: list[float], sign: float) -> int:
    """The block whose update moves the value furthest in the direction `sign`."""
    jumps = [sign * (o - i) for i, o in zip(trajectory_in, trajectory_out, strict=True)]
    return max(range(len(jumps)), key=jumps.__getitem__)


def run_capture(model: nn.Module, structure: Structure, input_ids: torch.Tensor, tokens: list[int]) -> _Capture:
    """One hooked forward pass of `input_ids` ([1, T]) that records what the trace needs at `tokens`."""
    device = next(model.parameters()).device
    hidden_size = _hidden_size(model, structure, input_ids)
    capture = _Capture(tokens=list(tokens))
    with _capture_hooks(structure, tokens, hidden_size, capture), torch.no_grad():
        model(input_ids=input_ids.to(device), attention_mask=torch.ones_like(input_ids).to(device))
    missing = [i for i in range(len(structure)) if i not in capture.block_out or i not in capture.block_in]
    if missing:
        raise MassactError(f"blocks {missing[:5]} did not run or took no hidden state; check --blocks")
    return capture


def _hidden_size(model: nn.Module, structure: Structure, input_ids: torch.Tensor) -> int:
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    size = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None) or getattr(text, "d_model", None)
    if isinstance(size, int):
        return size
    sizes: list[int] = []
    with (
        forward_hooks([(structure.blocks[0], lambda m, a, o: sizes.append(output_tensor(o).shape[-1]))]),
        torch.no_grad(),
    ):
        model(input_ids=input_ids[:, :1].to(next(model.parameters()).device))
    return sizes[0]


def trace_site(
    capture: _Capture,
    structure: Structure,
    hidden_size: int,
    token_position: int,
    dim: int,
    *,
    token_text: str = "",
    token_kind: str = "other",
    block: int | None = None,
    top: int = 10,
    share: float = 0.9,
) -> SiteTrace:
    """Trace the site (`token_position`, `dim`) from a capture that recorded that token."""
    row = capture.tokens.index(token_position)
    n = len(structure)
    value_in = [float(capture.block_in[i][row, dim]) for i in range(n)]
    value_out = [float(capture.block_out[i][row, dim]) for i in range(n)]
    peak_block = max(range(n), key=lambda i: abs(value_out[i]))
    peak_value = value_out[peak_block]
    if block is None:
        block = jump_block(value_in, value_out, math.copysign(1.0, peak_value))
    elif not 0 <= block < n:
        raise MassactError(f"--block {block} is out of range; the model has blocks 0..{n - 1}")
    jump = value_out[block] - value_in[block]
    updates = {
        name: float(capture.update[(block, name)][row, dim]) if (block, name) in capture.update else 0.0
        for name in SUBLAYERS
    }
    other = jump - sum(updates.values())
    sign = math.copysign(1.0, jump) if jump else 1.0
    writer_name = max(SUBLAYERS, key=lambda name: sign * updates[name]) if any(updates.values()) else None
    writers = writer_linears(structure, block, hidden_size)
    writer = writers.get(writer_name) if writer_name else None
    entries: list[WeightEntry] = []
    needed: dict[str, int | None] = {"of_jump": None, "of_update": None}
    channels: list[dict] = []
    module_output = None
    bias = 0.0
    note = ""
    if writer is None or (block, writer_name) not in capture.writer_in:
        note = f"no Linear with output size {hidden_size} found in the {writer_name} of block {block}"
    else:
        key = (block, writer_name)
        x = capture.writer_in[key][row]
        medians = capture.writer_median[key]
        module_output = float(capture.writer_out[key][row, dim])
        bias = writer.bias(dim)
        wide = max(top, 1)
        contributions, order = _contributions(writer, x, dim, module_output - bias)
        ranked = contributions[order]
        needed = {
            "of_jump": _needed(ranked, jump, share),
            "of_update": _needed(ranked, module_output - bias, share),
        }
        keep = max(wide, min(needed["of_jump"] or 0, MAX_ENTRIES))
        entries = _entries(block, writer, x, medians, dim, order[:keep], contributions, module_output - bias, jump)
        spikes = torch.argsort(x.abs(), descending=True)[:wide]
        channels = [
            {
                "channel": int(c),
                "input": float(x[c]),
                "ratio_to_median": abs(float(x[c])) / float(medians[c]) if float(medians[c]) > 0 else math.inf,
            }
            for c in spikes
        ]
    return SiteTrace(
        token=token_position,
        token_text=token_text,
        token_kind=token_kind,
        dim=dim,
        block=block,
        value_in=value_in[block],
        value_out=value_out[block],
        attention_update=updates["attention"],
        mlp_update=updates["mlp"],
        other_update=other,
        writer=writer_name,
        module=writer.name if writer else None,
        module_output=module_output,
        bias=bias,
        share=share,
        entries_needed=needed,
        entries=entries,
        channels=channels,
        trajectory=value_out,
        peak_block=peak_block,
        peak_value=peak_value,
        note=note,
    )
