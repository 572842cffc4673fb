"""One hooked forward pass that keeps what a trace needs, at the traced tokens only.

Per block: the residual stream entering and leaving it, each sub-layer's output (the update it
adds), the input and output of each writer Linear, and for a mixture-of-experts MLP the experts
module's input and routing. When a norm of the block takes a sub-layer's output itself (sandwich
norms, as Gemma 2/3: `h + norm(attn(h))`), what the block adds is that norm's output: the norm is
then recorded as the sub-layer's post-norm, with its input and output. Everything stays on the
model's device until the forward ends (no host synchronisation inside the pass); `run_capture`
moves the small result to the CPU afterwards. The pass runs the model in memory or block by block
alike (`run_forward`): the hooks sit on the blocks and their parts only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from massact.capture.forward import run_forward
from massact.capture.hooks import HookFn, HookSet, output_tensor
from massact.errors import MassactError
from massact.models.structure import Structure
from massact.trace.experts import Routing, routing_args
from massact.trace.linear import WriterLinear, find_writer_linear

Key = tuple[int, str]  # (block, "attention" | "mlp" | "shared")


def writer_linears(structure: Structure, block: int, hidden_size: int) -> dict[str, WriterLinear | None]:
    """The writer Linear of the block's attention, of its dense MLP, and of its shared expert (MoE)."""
    moe = structure.moe(block)
    mlp, mlp_path = structure.mlp(block), structure.mlp_path(block)
    writers = {"attention": find_writer_linear(structure.attn(block), structure.attn_path(block), hidden_size)}
    if moe is None:
        writers["mlp"] = find_writer_linear(mlp, mlp_path, hidden_size)
    elif moe.shared:
        name = moe.shared[0]
        writers["shared"] = find_writer_linear(mlp.get_submodule(name), f"{mlp_path}.{name}", hidden_size)
    return writers


@dataclass
class TraceCapture:
    """What the hooks keep: vectors at the traced tokens, per-channel medians of writer inputs, experts inputs."""

    tokens: list[int]
    block_in: dict[int, torch.Tensor] = field(default_factory=dict)
    block_out: dict[int, torch.Tensor] = field(default_factory=dict)
    update: dict[Key, torch.Tensor] = field(default_factory=dict)
    writer_in: dict[Key, torch.Tensor] = field(default_factory=dict)
    writer_median: dict[Key, torch.Tensor] = field(default_factory=dict)
    writer_out: dict[Key, torch.Tensor] = field(default_factory=dict)
    routing_raw: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    experts_in: dict[int, torch.Tensor] = field(default_factory=dict)  # the experts module's input, every token
    post_norm: dict[Key, str] = field(default_factory=dict)  # the norm applied to a sub-layer's output
    norm_in: dict[Key, torch.Tensor] = field(default_factory=dict)
    norm_median: dict[Key, torch.Tensor] = field(default_factory=dict)  # per channel, median |input| over tokens
    norm_out: dict[Key, torch.Tensor] = field(default_factory=dict)

    def routing(self, block: int, row: int) -> Routing | None:
        """The experts input and chosen experts of block `block` on traced token number `row`."""
        if block not in self.routing_raw:
            return None
        hidden, index, weights = self.routing_raw[block]
        return Routing(hidden=hidden[row], experts=index[row].tolist(), weights=weights[row].float().tolist())

    def to_cpu(self) -> None:
        stores = (self.block_in, self.block_out, self.update, self.writer_in, self.writer_median, self.writer_out)
        for store in (*stores, self.norm_in, self.norm_median, self.norm_out):
            for key, value in store.items():
                store[key] = value.float().cpu()
        for key, (hidden, index, weights) in self.routing_raw.items():
            self.routing_raw[key] = (hidden.cpu(), index.cpu(), weights.cpu())
        for key, hidden in self.experts_in.items():
            self.experts_in[key] = hidden.cpu()


def block_norms(structure: Structure, block: int) -> dict[str, nn.Module]:
    """The norm modules of a block outside its attention and MLP (path relative to the model -> module)."""
    inside = [p for p in (structure.attn_path(block), structure.mlp_path(block)) if p]
    prefix = f"{structure.blocks_path}.{block}"
    found = {}
    for name, module in structure.blocks[block].named_modules():
        path = f"{prefix}.{name}" if name else prefix
        if name and "norm" in type(module).__name__.lower() and not any(path.startswith(p + ".") for p in inside):
            found[path] = module
    return found


def _first_sequence(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[0] if tensor.dim() == 3 else tensor


class TraceHooks(HookSet):
    """Hooks on every block, sub-layer, writer Linear and experts module of `structure`."""

    per_forward = ("_outputs", "_norm_of")  # one pass's sub-layer outputs and open norms (the capture is per block)

    def __init__(self, model: nn.Module, structure: Structure, tokens: list[int], hidden_size: int) -> None:
        super().__init__(model)
        self.structure = structure
        self.capture = TraceCapture(tokens=list(tokens))
        self.index = torch.tensor(tokens, dtype=torch.long)
        self._on_device: dict[torch.device, torch.Tensor] = {}
        self.writers = {i: writer_linears(structure, i, hidden_size) for i in range(len(structure))}
        self.norms = {i: block_norms(structure, i) for i in range(len(structure))}
        self._outputs: dict[Key, torch.Tensor] = {}  # each sub-layer's output tensor, until its block ends
        self._norm_of: dict[str, Key] = {}  # norm path -> the sub-layer whose output it just took

    def _rows(self, device: torch.device) -> torch.Tensor:
        """The traced token positions on `device` (copied there once, not once per hook)."""
        if device not in self._on_device:
            self._on_device[device] = self.index.to(device)
        return self._on_device[device]

    def _at_tokens(self, tensor: torch.Tensor) -> torch.Tensor:
        x = _first_sequence(tensor.detach())
        return x[self._rows(x.device)]

    def _store(self, store: dict, key: object) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            store[key] = self._at_tokens(output_tensor(output))

        return hook

    def _sublayer_out(self, key: Key) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            tensor = output_tensor(output)
            self.capture.update[key] = self._at_tokens(tensor)
            self._outputs[key] = tensor  # held until the block ends, to recognise a norm that takes it

        return hook

    def _block_out(self, index: int) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            self.capture.block_out[index] = self._at_tokens(output_tensor(output))
            for key in [k for k in self._outputs if k[0] == index]:
                del self._outputs[key]

        return hook

    def _norm_in(self, index: int, path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()), None)
            key = next((k for k, out in self._outputs.items() if k[0] == index and out is x), None)
            self._norm_of.pop(path, None)
            if key is not None:
                self._norm_of[path] = key
                self.capture.post_norm[key] = path
                self.capture.norm_in[key] = self._at_tokens(x)
                self.capture.norm_median[key] = _first_sequence(x.detach()).float().abs().median(dim=0).values

        return hook

    def _norm_out(self, path: str) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            key = self._norm_of.pop(path, None)
            if key is not None:
                self.capture.norm_out[key] = self._at_tokens(output_tensor(output))

        return hook

    def _block_in(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                self.capture.block_in[index] = self._at_tokens(hidden)

        return hook

    def _writer_in(self, key: Key):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = _first_sequence((args[0] if args else kwargs["input"]).detach())
            self.capture.writer_in[key] = x[self._rows(x.device)]
            self.capture.writer_median[key] = x.float().abs().median(dim=0).values

        return hook

    def _routing(self, block: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            found = routing_args(args, kwargs)
            if found is not None:
                hidden, index, weights = found
                rows = self._rows(hidden.device)
                self.capture.routing_raw[block] = (hidden[rows].detach(), index[rows], weights[rows].detach())
                self.capture.experts_in[block] = hidden.detach()

        return hook

    def pre_hooks(self) -> Iterable[tuple[nn.Module, object]]:
        for i, block in enumerate(self.structure.blocks):
            yield block, self._block_in(i)
            for path, norm in self.norms[i].items():
                yield norm, self._norm_in(i, path)
            for name, writer in self.writers[i].items():
                if writer is not None:
                    yield writer.module, self._writer_in((i, name))
            moe = self.structure.moe(i)
            if moe is not None and moe.fused:
                yield self.structure.mlp(i).get_submodule(moe.experts), self._routing(i)

    def forward_hooks(self) -> Iterable[tuple[nn.Module, HookFn]]:
        capture = self.capture
        for i, block in enumerate(self.structure.blocks):
            yield block, self._block_out(i)
            for name, part in (("attention", self.structure.attn(i)), ("mlp", self.structure.mlp(i))):
                if part is not None:
                    yield part, self._sublayer_out((i, name))
            for path, norm in self.norms[i].items():
                yield norm, self._norm_out(path)
            for name, writer in self.writers[i].items():
                if writer is not None:
                    yield writer.module, self._store(capture.writer_out, (i, name))


def run_capture(
    model: nn.Module, structure: Structure, input_ids: torch.Tensor, tokens: list[int], hidden_size: int
) -> TraceCapture:
    """One hooked forward pass of `input_ids` ([1, T]) that records what the trace needs at `tokens`."""
    with TraceHooks(model, structure, tokens, hidden_size) as hooks:
        run_forward(model, input_ids)
    capture = hooks.capture
    missing = [i for i in range(len(structure)) if i not in capture.block_out or i not in capture.block_in]
    if missing:
        raise MassactError(f"blocks {missing[:5]} did not run or took no hidden state; check `blocks_path`")
    capture.to_cpu()
    return capture
