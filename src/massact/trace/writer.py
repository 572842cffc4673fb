"""Who writes a massive activation: the block, the sub-layer, the expert and the weight entries.

For a site (token, dim) the block whose update `output - input` moves the value most toward its final
sign is the *jump block*. Hooks on that block's own attention and MLP modules give each sub-layer's
update as the block adds it (its output); whatever the two do not explain (e.g. a norm after a
sub-layer) is reported as `other`. Inside the sub-layer that carries the jump, the writer matrix is
`y = s (W x + b)`, so `y[dim] = sum_j s W[dim, j] x[j] + s b[dim]`: each term is one weight entry's
contribution. For a dense sub-layer the writer is its last Linear with output size = hidden size and
`s = 1`. For a mixture-of-experts MLP the update is split over the routed experts (`s` = the router
weight, the writer = that expert's slice of the fused down-projection) and the shared experts
(`s` = their measured gate, the writer = their down-projection).

Sandwich-norm blocks (Gemma 2/3) norm a sub-layer's output before adding it: `h + g * u / rms(u)`.
There the update at the site is the norm's output, `g[dim] * u[dim] / rms(u)`; the one entry that scales it
is the norm's gain on that dim (`w[dim]`, or `1 + w[dim]` as Gemma stores it), the super weight, and it
is reported as the entry that writes the jump. A sub-layer that explains less than `MIN_SHARE` of the jump
is never named as its writer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from massact.errors import MassactError
from massact.models.offload import materialized
from massact.models.structure import Structure
from massact.trace.capture import TraceCapture, writer_linears
from massact.trace.experts import checked_hidden, expert_output
from massact.trace.linear import ExpertMatrix, NormGain, WriterMatrix

SUBLAYERS = ("attention", "mlp")
MAX_ENTRIES = 256  # entries listed at most, even when more are needed to reach the share
MIN_SHARE = 0.05  # a sub-layer whose update is less than this share of the jump is not named its writer

ExpertsInput = Callable[[int], "torch.Tensor | None"]  # block -> the experts module's input on every token


@dataclass
class WeightEntry:
    """One weight entry W[row, column] of a writer matrix and what it adds to the site."""

    block: int
    module: str
    parameter: str
    expert: int | None  # the expert whose slice of a fused parameter holds the entry (None: dense)
    row: int  # output feature = the massive dim
    column: int  # input channel
    stored_index: list[int]  # index into `parameter` (differs from [row, column] for Conv1D / fused experts)
    weight: float
    input: float  # x[column] on the site's token
    input_ratio: float  # |x[column]| / median over the sequence's tokens of |x[column]|
    scale: float  # what the sub-layer multiplies the writer's output by (router weight, gate; 1 when dense)
    contribution: float  # scale * weight * input
    share_of_update: float  # contribution / (the writer's scaled output at the site - its scaled bias)
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
    writer: str | None  # "attention", "mlp", "expert" or "shared"
    module: str | None
    module_output: float | None  # the writer's scaled output at the site
    bias: float
    share: float  # the target share for `entries_needed`
    entries_needed: dict[str, int | None]  # fewest top entries that explain `share` of the jump / update
    entries: list[WeightEntry]
    channels: list[dict]  # the input channels with the largest |x| on the token
    trajectory: list[float]  # the site's value at every block output
    peak_block: int
    peak_value: float
    expert: int | None = None  # the routed expert that writes the jump (MoE)
    experts: list[dict] = field(default_factory=list)  # every routed expert on the token: weight x output
    shared_update: float | None = None  # what the shared experts add at the site (MoE)
    note: str = ""
    post_norm: str | None = None  # the norm the writing sub-layer's output passes through before it is added
    pre_norm_update: float | None = None  # that sub-layer's own output at the site, before its norm

    @property
    def jump(self) -> float:
        return self.value_out - self.value_in

    def to_json(self) -> dict:
        data = asdict(self)
        data["jump"] = self.jump
        return data


@dataclass
class _Writer:
    """The matrix chosen to explain the jump, with its input and scaled output at the site."""

    kind: str
    matrix: WriterMatrix | None
    x: torch.Tensor | None = None  # the matrix input on the token
    medians: torch.Tensor | None = None  # per input channel, median |x| over the sequence
    scale: float = 1.0
    output: float | None = None  # scale * (W x + b)[dim]
    note: str = ""


def _needed(contributions: torch.Tensor, total: float, share: float) -> int | None:
    """Fewest entries, largest signed contribution first, whose sum reaches `share` of `total`."""
    if total == 0 or not math.isfinite(total):
        return None
    cumulative = torch.cumsum(contributions * math.copysign(1.0, total), 0) / abs(total)
    reached = (cumulative >= share).nonzero()
    return int(reached[0]) + 1 if reached.numel() else None


def _entries(
    block: int,
    writer: _Writer,
    dim: int,
    columns: torch.Tensor,
    contributions: torch.Tensor,
    update: float,
    jump: float,
) -> list[WeightEntry]:
    matrix_view = writer.matrix
    matrix = matrix_view.matrix().detach().float().cpu()
    stats = _WeightStats(matrix)
    cumulative = 0.0
    entries = []
    for column in columns.tolist():
        weight = float(matrix[dim, column])
        value = float(writer.x[column])
        med = float(writer.medians[column])
        contribution = float(contributions[column])
        cumulative += contribution
        entries.append(
            WeightEntry(
                block=block,
                module=matrix_view.name,
                parameter=matrix_view.parameter,
                expert=matrix_view.expert,
                row=dim,
                column=column,
                stored_index=list(matrix_view.stored_index(dim, column)),
                weight=weight,
                input=value,
                input_ratio=abs(value) / med if med > 0 else math.inf,
                scale=writer.scale,
                contribution=contribution,
                share_of_update=contribution / update if update else math.nan,
                share_of_jump=contribution / jump if jump else math.nan,
                cumulative_share_of_jump=cumulative / jump if jump else math.nan,
                **stats.of(weight),
            )
        )
    return entries


class _WeightStats:
    """Where one entry stands in its whole parameter: |w| rank, |w| / median |w|, and sigmas from the mean."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.flat = weights.abs().reshape(-1)
        self.median = float(self.flat.median())
        self.mean, self.std = float(weights.mean()), float(weights.std())

    def of(self, weight: float) -> dict:
        return {
            "weight_rank": int((self.flat > abs(weight)).sum()) + 1,
            "weight_ratio": abs(weight) / self.median if self.median > 0 else math.inf,
            "weight_sigma": abs(weight - self.mean) / self.std if self.std > 0 else math.inf,
        }


def jump_block(trajectory_in: list[float], trajectory_out: list[float], sign: float) -> int:
    """The block whose update moves the value furthest in the direction `sign`."""
    jumps = [sign * (o - i) for i, o in zip(trajectory_in, trajectory_out, strict=True)]
    return max(range(len(jumps)), key=jumps.__getitem__)


def _dense_writer(capture: TraceCapture, key: tuple[int, str], matrix, row: int, dim: int, scale_to=None) -> _Writer:
    """A Linear writer from the capture; `scale_to` rescales its output to a measured total (a gate)."""
    x = capture.writer_in[key][row]
    output = float(capture.writer_out[key][row, dim])
    scale = 1.0
    if scale_to is not None and output:
        scale = scale_to / output
    return _Writer(key[1], matrix, x, capture.writer_median[key], scale, scale * output)


def _moe_writer(
    capture: TraceCapture,
    structure: Structure,
    block: int,
    row: int,
    dim: int,
    sign: float,
    mlp_update: float,
    writers: dict,
    experts_input: ExpertsInput,
) -> tuple[_Writer, list[dict], float | None]:
    """Split a mixture-of-experts MLP's update over its routed experts and shared experts; pick the writer."""
    moe = structure.moe(block)
    routing = capture.routing(block, row)
    if routing is None or not moe.fused:
        note = f"the experts of block {block} are not a fused experts module called with its routing; not split"
        return _Writer("mlp", None, note=note), [], None
    path = f"{structure.mlp_path(block)}.{moe.experts}"
    module = structure.mlp(block).get_submodule(moe.experts)
    weight = next(module.parameters())  # a real tensor: `trace_site` has the jump block's weights read
    dtype, device = weight.dtype, weight.device
    x = routing.hidden.to(device=device, dtype=dtype)[None]
    rows = []
    for expert, weight in zip(routing.experts, routing.weights, strict=True):
        if 0 <= expert < moe.num_experts:
            value = float(expert_output(module, x, expert)[0, dim])
            rows.append({"expert": expert, "router_weight": weight, "expert_output": value, "update": weight * value})
    routed = sum(r["update"] for r in rows)
    shared = mlp_update - routed if moe.shared else None
    best = max(rows, key=lambda r: sign * r["update"], default=None)
    if shared is not None and (best is None or sign * shared > sign * best["update"]):
        key = (block, "shared")
        if writers.get("shared") is None or key not in capture.writer_in:
            return (
                _Writer("shared", None, note=f"no Linear with the hidden size in the shared expert of block {block}"),
                rows,
                shared,
            )
        return _dense_writer(capture, key, writers["shared"], row, dim, scale_to=shared), rows, shared
    if best is None:
        return _Writer("expert", None, note=f"no expert was routed on this token in block {block}"), rows, shared
    matrix = ExpertMatrix(name=path, module=module, expert=best["expert"])
    hidden = checked_hidden(matrix, x)
    if hidden is None:
        note = f"expert {best['expert']} of {path}: its down-projection input could not be rebuilt; entries not listed"
        return _Writer("expert", matrix, scale=best["router_weight"], output=best["update"], note=note), rows, shared
    everything = experts_input(block)
    medians = checked_hidden(matrix, everything.to(device=device, dtype=dtype)) if everything is not None else None
    medians = (
        medians.float().abs().median(dim=0).values.cpu()
        if medians is not None
        else torch.full((hidden.shape[-1],), math.nan)
    )
    writer = _Writer("expert", matrix, hidden[0].float().cpu(), medians, best["router_weight"], best["update"])
    return writer, rows, shared


def trace_site(
    capture: TraceCapture,
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
    experts_input: ExpertsInput = lambda block: None,
    model: nn.Module | None = None,
) -> SiteTrace:
    """Trace the site (`token_position`, `dim`) from a capture that recorded that token.

    `model` (the model the capture ran) lets the weights of the jump block be read when it runs block by block.
    """
    row = capture.tokens.index(token_position)
    n = len(structure)
    value_in = [float(capture.block_in[i][row, dim]) for i in range(n)]
    value_out = [float(capture.block_out[i][row, dim]) for i in range(n)]
    peak_block = max(range(n), key=lambda i: abs(value_out[i]))
    peak_value = value_out[peak_block]
    if block is None:
        block = jump_block(value_in, value_out, math.copysign(1.0, peak_value))
    elif not 0 <= block < n:
        raise MassactError(f"`block={block}` is out of range; the model has blocks 0..{n - 1}")
    jump = value_out[block] - value_in[block]
    updates = {name: _added(capture, (block, name), row, dim) for name in SUBLAYERS}
    other = jump - sum(updates.values())
    sign = math.copysign(1.0, jump) if jump else 1.0
    sublayer = max(SUBLAYERS, key=lambda name: sign * updates[name]) if any(updates.values()) else None
    weights = materialized(model, [structure.blocks[block]]) if model is not None else nullcontext()
    with weights:  # block by block, the jump block's weights are read for the attribution
        writers = writer_linears(structure, block, hidden_size)
        experts: list[dict] = []
        shared_update = None
        post_norm = capture.post_norm.get((block, sublayer)) if sublayer else None
        if sublayer is not None and not sign * updates[sublayer] >= MIN_SHARE * abs(jump):
            writer = _Writer(
                "-",
                None,
                note=f"no sub-layer writes this jump: attention adds {updates['attention']:.4g} and the MLP "
                f"{updates['mlp']:.4g} of {jump:.4g}; the rest ({other:.4g}) comes from outside both "
                "(a norm after the residual sum, or the residual path itself)",
            )
            sublayer = None
        elif post_norm is not None:
            writer = _norm_writer(capture, structure, (block, sublayer), row, dim, post_norm)
        elif sublayer == "mlp" and structure.moe(block) is not None:
            writer, experts, shared_update = _moe_writer(
                capture, structure, block, row, dim, sign, updates["mlp"], writers, experts_input
            )
        elif sublayer is not None and writers.get(sublayer) is not None and (block, sublayer) in capture.writer_in:
            writer = _dense_writer(capture, (block, sublayer), writers[sublayer], row, dim)
        else:
            note = f"no Linear with output size {hidden_size} in the {sublayer} of block {block}"
            writer = _Writer(sublayer or "-", None, note=note)
        entries: list[WeightEntry] = []
        needed: dict[str, int | None] = {"of_jump": None, "of_update": None}
        channels: list[dict] = []
        bias = 0.0
        if isinstance(writer.matrix, NormGain):
            bias = writer.matrix.bias(dim)
            entries = [_norm_entry(block, writer, dim, writer.output - bias, jump)]
            reached = abs(entries[0].contribution) >= share * abs(jump) if jump else False
            needed = {"of_jump": 1 if reached else None, "of_update": 1}
        elif writer.matrix is not None and writer.x is not None:
            bias = writer.scale * writer.matrix.bias(dim)
            update = writer.output - bias
            row_w = writer.matrix.matrix()[dim].detach().double().cpu()
            contributions = writer.scale * row_w * writer.x.double()
            order = torch.argsort(
                contributions * (math.copysign(1.0, update) if update else 1.0), descending=True, stable=True
            )
            ranked = contributions[order]
            needed = {"of_jump": _needed(ranked, jump, share), "of_update": _needed(ranked, update, share)}
            wide = max(top, 1)
            keep = max(wide, min(needed["of_jump"] or 0, MAX_ENTRIES))
            entries = _entries(block, writer, dim, order[:keep], contributions, update, jump)
            spikes = torch.argsort(writer.x.abs(), descending=True)[:wide]
            channels = [
                {
                    "channel": int(c),
                    "input": float(writer.x[c]),
                    "ratio_to_median": abs(float(writer.x[c])) / float(writer.medians[c])
                    if float(writer.medians[c]) > 0
                    else math.inf,
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
        writer=writer.kind if sublayer else None,
        module=writer.matrix.name if writer.matrix else None,
        module_output=writer.output,
        bias=bias,
        share=share,
        entries_needed=needed,
        entries=entries,
        channels=channels,
        trajectory=value_out,
        peak_block=peak_block,
        peak_value=peak_value,
        expert=writer.matrix.expert if writer.matrix is not None else None,
        experts=experts,
        shared_update=shared_update,
        note=writer.note,
        post_norm=post_norm if sublayer else None,
        pre_norm_update=float(capture.update[(block, sublayer)][row, dim]) if post_norm and sublayer else None,
    )


def _added(capture: TraceCapture, key: tuple[int, str], row: int, dim: int) -> float:
    """What a sub-layer adds to the residual at the site: its norm's output when a norm follows it, else its own."""
    store = capture.norm_out if key in capture.norm_out else capture.update
    return float(store[key][row, dim]) if key in store else 0.0


def _norm_writer(
    capture: TraceCapture, structure: Structure, key: tuple[int, str], row: int, dim: int, path: str
) -> _Writer:
    """The norm after a sub-layer as the writer: its gain on `dim` scales the sub-layer's normalized output."""
    module = _find_module(structure, path)
    x = capture.norm_in[key][row].double()
    output = float(capture.norm_out[key][row, dim])
    gain = NormGain(name=path, module=module)
    normalized = gain.normalized(x)
    note = (
        f"the {key[1]} output passes through `{path}` before it is added: its gain on dim {dim} "
        f"({output - gain.bias(dim):.4g} / normalized input {normalized[dim]:.4g} = "
        f"{(output - gain.bias(dim)) / float(normalized[dim]) if float(normalized[dim]) else math.nan:.4g}) "
        "writes the jump"
    )
    return _Writer(key[1], gain, normalized.float(), capture.norm_median[key], 1.0, output, note=note)


def _find_module(structure: Structure, path: str):
    """The module at `path` (a path inside one of the blocks)."""
    prefix = f"{structure.blocks_path}."
    index, _, rest = path.removeprefix(prefix).partition(".")
    return structure.blocks[int(index)].get_submodule(rest)


def _norm_entry(block: int, writer: _Writer, dim: int, contribution: float, jump: float) -> WeightEntry:
    """The norm's gain entry on `dim`, which carries the whole (bias-free) update at the site."""
    gain: NormGain = writer.matrix
    weights = gain.module.weight.detach().float().cpu()
    weight = float(weights[dim])
    value = float(writer.x[dim])
    med = float(writer.medians[dim])
    update = writer.output
    return WeightEntry(
        block=block,
        module=gain.name,
        parameter=gain.parameter,
        expert=None,
        row=dim,
        column=dim,
        stored_index=[dim],
        weight=weight,
        input=value,
        input_ratio=abs(value) / med if med > 0 else math.inf,
        scale=1.0,
        contribution=contribution,
        share_of_update=contribution / update if update else math.nan,
        share_of_jump=contribution / jump if jump else math.nan,
        cumulative_share_of_jump=contribution / jump if jump else math.nan,
        **_WeightStats(weights).of(weight),
    )
