"""Simulated quantization as a context manager around any forward: `quant_context(loaded, scheme, strategy, calib)`.

On entry each Linear's weight (except the output head's) is replaced by its transformed and fake-quantized
version through `edited_parameters` (the original tensor comes back bit-exactly on exit, also on error; a model
run block by block gets the new weight as each block is read); a forward
pre-hook on each Linear transforms and fake-quantizes its input; a forward hook on each key and value
projection fake-quantizes the KV cache (per token and head, around the projection's bias, which every
token shares and the cache holds once in full precision). Nothing else of the model changes, and no forward is replaced.
Smoothing scales depend on the weight, so they are computed from the real tensor as it is edited.

`rotate` is the rewrite's own transform (`quant.rotate`): its plan of edits is active in the same swap, each
Linear's rounding applied after the plan's edits of its weight, so the quantized model is the rewritten one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from massact.capture.hooks import HookFn, HookSet
from massact.errors import MassactError
from massact.models.dims import model_dims
from massact.models.edits import edited_parameters
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure, is_linear
from massact.quant.calibrate import Calibration
from massact.quant.rotate import rotation_plan
from massact.quant.schemes import Scheme, quantize_activation, quantize_heads, quantize_weight
from massact.quant.strategies import parts, smooth_scales
from massact.residual.plan import Plan

KEY_NAMES = ("k_proj", "key", "k", "wk", "key_proj")
VALUE_NAMES = ("v_proj", "value", "v", "wv", "value_proj")
FUSED_NAMES = ("c_attn", "qkv_proj", "Wqkv", "qkv")


@dataclass
class LinearPlan:
    """How one Linear is treated: its input transform, its weight and its static activation scale."""

    name: str
    module: nn.Module
    smooth_maxima: torch.Tensor | None = None  # `smooth`: the calibration's max |x| per input channel
    alpha: float = 0.5  # `smooth`: its strength
    smooth: torch.Tensor | None = None  # [in]: input / s, weight columns * s (set from the weight: `fit`)
    static_scale: torch.Tensor | None = None  # scalar scale for static per-tensor activations
    keep: tuple[tuple[int, ...], ...] = ()  # weight entries (stored index) kept in full precision

    @property
    def conv1d(self) -> bool:
        return not isinstance(self.module, nn.Linear)

    @property
    def transforms_input(self) -> bool:
        """Whether the input is smoothed (so not shared with the other readers of the same tensor)."""
        return self.smooth_maxima is not None

    def rows(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as [out, in] (Conv1D stores [in, out])."""
        return weight.t() if self.conv1d else weight

    def fit(self, weight: torch.Tensor) -> None:
        """Set the smoothing scales from the real weight (in memory on entry; block by block as it is read)."""
        if self.smooth_maxima is not None:
            self.smooth = smooth_scales(self.smooth_maxima, self.rows(weight), self.alpha).to(
                weight.device, weight.dtype
            )

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.smooth if self.smooth is not None else x


def quantized_linears(model: nn.Module, blocks: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Every Linear (and Conv1D) except the output head; only those under `blocks` paths when given."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    prefixes = None if blocks is None else tuple(f"{b}." for b in blocks)
    return {
        name: module
        for name, module in model.named_modules()
        if is_linear(module) and module is not head and (prefixes is None or name.startswith(prefixes))
    }


def unquantized_weights(model: nn.Module, blocks: Iterable[str]) -> dict | None:
    """The weights inside `blocks` the simulator leaves in full precision: 3-D expert tensors (fused experts
    are not Linear modules, and their inputs cannot be hooked). None when there are none.

    `share`: their entries against all weight-matrix entries in the blocks (Linear weights included).
    """
    names, entries, total = [], 0, 0
    for block in blocks:
        module = model.get_submodule(block)
        for name, param in module.named_parameters():
            if param.dim() >= 3:
                names.append(f"{block}.{name}")
                entries += param.numel()
                total += param.numel()
        total += sum(m.weight.numel() for m in module.modules() if is_linear(m))
    if not names:
        return None
    return {"parameters": names, "entries": entries, "share": entries / total}


def kv_projections(model: nn.Module, names: Iterable[str]) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of the key/value projections among `names`: kind is `k`, `v` or `qkv` (fused)."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        kind = "k" if leaf in KEY_NAMES else "v" if leaf in VALUE_NAMES else "qkv" if leaf in FUSED_NAMES else None
        if kind is not None:
            found.append((name, modules[name], kind))
    return found


class QuantHooks(HookSet):
    """The input pre-hooks and KV output hooks of one simulated scheme (weights are swapped separately).

    `keep` (the kept tokens) belongs to one forward pass; the model's own pre-hook sets it, and clears the
    one-tensor cache `_last_input` / `_last_output`, on every call of the model, block by block included.
    """

    per_forward = ("keep",)

    def __init__(
        self,
        model: nn.Module,
        scheme: Scheme,
        plans: list[LinearPlan],
        kv: list[tuple[str, nn.Module, str]],
        head_dim: int | None,
        keep_first: int = 0,
        keep_ids: list[int] | None = None,
        record: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(model)
        self.scheme = scheme
        self.plans = plans
        self.kv = kv
        self.head_dim = head_dim
        self.keep_first = keep_first
        self.keep_ids = keep_ids or []
        self._ids_tensor: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None
        self.record = record  # when given: record max |transformed input| over non-kept tokens, quantize nothing
        self._last_input: torch.Tensor | None = None
        self._last_output: torch.Tensor | None = None

    def _keep_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._last_input = self._last_output = None
        ids = self.input_ids
        if ids is None or (not self.keep_first and not self.keep_ids):
            self.keep = None
            return
        keep = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        keep[:, : self.keep_first] = True
        if self.keep_ids:
            if self._ids_tensor is None or self._ids_tensor.device != ids.device:
                self._ids_tensor = torch.tensor(self.keep_ids, device=ids.device)
            keep |= torch.isin(ids, self._ids_tensor)
        self.keep = keep

    def remove(self) -> None:
        super().remove()
        self._last_input = self._last_output = None

    def _keep_for(self, x: torch.Tensor) -> torch.Tensor | None:
        keep = self.keep
        if keep is None or x.dim() < 2 or tuple(keep.shape) != tuple(x.shape[:-1])[-2:]:
            return None
        return keep.to(x.device)

    def pre_hooks(self) -> Iterable[tuple[nn.Module, Callable]]:
        yield self.model, self._keep_mask
        for plan in self.plans:
            yield plan.module, self._input_hook(plan)

    def _input_hook(self, plan: LinearPlan) -> Callable:
        bits = self.scheme.act_bits

        shared = not plan.transforms_input and plan.static_scale is None and self.record is None

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if not args:
                return None
            if shared and args[0] is self._last_input:  # q/k/v (gate/up) read one tensor: quantize it once
                return (self._last_output, *args[1:]), kwargs
            x = plan.transform_input(args[0])
            if self.record is not None:
                keep = self._keep_for(x)
                magnitude = x.detach().abs()
                if keep is not None:
                    magnitude = magnitude.masked_fill(keep.unsqueeze(-1), 0.0)
                peak = magnitude.amax().float()
                previous = self.record.get(plan.name)
                self.record[plan.name] = peak if previous is None else torch.maximum(previous, peak)
            elif bits is not None:
                x = quantize_activation(x, bits, self.scheme.granularity, self._keep_for(x), plan.static_scale)
                if shared:
                    self._last_input, self._last_output = args[0], x
            return (x, *args[1:]), kwargs

        return hook

    def forward_hooks(self) -> Iterable[tuple[nn.Module, HookFn]]:
        if self.scheme.kv_bits is None or self.record is not None:
            return
        for _, module, kind in self.kv:
            yield module, self._kv_hook(kind)

    def _kv_hook(self, kind: str) -> HookFn:
        bits, head_dim = self.scheme.kv_bits, self.head_dim

        def cache(x: torch.Tensor, bias: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
            if bias is None:
                return quantize_heads(x, bits, head_dim, keep)
            return quantize_heads(x - bias, bits, head_dim, keep) + bias  # the bias is shared: stored once, exact

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            keep = self._keep_for(output)
            bias = getattr(module, "bias", None)
            if kind != "qkv":
                return cache(output, bias, keep)
            q, k, v = output.chunk(3, dim=-1)
            _, k_bias, v_bias = bias.chunk(3) if bias is not None else (None, None, None)
            return torch.cat([q, cache(k, k_bias, keep), cache(v, v_bias, keep)], -1)

        return hook


@torch.no_grad()
def _new_weight(plan: LinearPlan, weight: torch.Tensor, bits: int | None, group: int | None) -> torch.Tensor:
    plan.fit(weight)
    if plan.smooth is None and bits is None:
        return weight
    rows = plan.rows(weight)
    if plan.smooth is not None:
        rows = rows * plan.smooth.to(rows)
    if bits is not None:
        if plan.keep:
            stored = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
            for index in plan.keep:  # indices into the stored parameter
                stored[index] = True
            mask = plan.rows(stored)
            values = rows[mask]
            rows = quantize_weight(rows.masked_fill(mask, 0.0), bits, group)
            rows[mask] = values
        else:
            rows = quantize_weight(rows, bits, group)
    new = rows.t() if plan.conv1d else rows
    return new.contiguous()


def swapped_weights(
    model: nn.Module, plans: list[LinearPlan], bits: int | None, group: int | None = None, rotated: Plan | None = None
) -> AbstractContextManager[None]:
    """Each plan's weight replaced by its transformed (and, with `bits`, quantized) version until exit; with
    `rotated`, the rewrite's rotation first (every tensor it edits, each weight rounded after its edits).

    The original tensors come back on exit, also on error, so the model ends bit-identical (`edited_parameters`).
    """
    edits = [(plan.module.weight, partial(_new_weight, plan, bits=bits, group=group)) for plan in plans]
    return rotated.active(then=edits) if rotated is not None else edited_parameters(model, edits)


def build_plans(
    loaded: LoadedModel,
    scheme: Scheme,
    strategy: str,
    calibration: Calibration | None,
    *,
    alpha: float = 0.5,
    blocks: Iterable[str] | None = None,
    static_scales: dict[str, torch.Tensor] | None = None,
) -> list[LinearPlan]:
    """The per-Linear plans for `scheme` under `strategy` (the calibration supplies maxima and super weights); a
    rotation is not a per-Linear transform here but the rewrite's (`quant_context`)."""
    chosen = parts(strategy)
    needs = chosen & {"smooth", "keep-super-weights", "outlier-tokens", "rotate"}
    if needs and calibration is None:
        raise MassactError(f"strategy {strategy!r} needs calibration windows, and `calibration` is None")
    if not scheme.quantizes_linears:
        return []
    plans = []
    supers: dict[str, list[tuple[int, ...]]] = {}
    if "keep-super-weights" in chosen and calibration is not None:
        for weight in calibration.super_weights:
            if weight.parameter == f"{weight.module}.weight":
                supers.setdefault(weight.module, []).append(weight.index)
    for name, module in quantized_linears(loaded.model, blocks).items():
        plan = LinearPlan(name=name, module=module, keep=tuple(supers.get(name, ())), alpha=alpha)
        device = loaded.device if module.weight.is_meta else module.weight.device  # meta: read block by block
        if "smooth" in chosen and calibration is not None:
            plan.smooth_maxima = calibration.act_maxima.get(name)
        if static_scales is not None and name in static_scales:
            plan.static_scale = static_scales[name].to(device, module.weight.dtype)
        plans.append(plan)
    return plans


def _kv_modules(loaded: LoadedModel, scheme: Scheme, blocks: Iterable[str] | None) -> tuple[list, int | None]:
    if scheme.kv_bits is None:
        return [], None
    head_dim = model_dims(loaded.model).head_dim
    names = [n for n, m in loaded.model.named_modules() if is_linear(m)]
    if blocks is not None:
        prefixes = tuple(f"{b}." for b in blocks)
        names = [n for n in names if n.startswith(prefixes)]
    kv = kv_projections(loaded.model, names)
    if head_dim is None or not kv:
        raise MassactError(
            f"scheme {scheme.name}: no key/value projections or head size found in this model; use a scheme without KV"
        )
    return kv, head_dim


@contextmanager
def quant_context(
    loaded: LoadedModel,
    scheme: Scheme,
    strategy: str = "none",
    calibration: Calibration | None = None,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    blocks: Iterable[int] | None = None,
    static_scales: dict[str, torch.Tensor] | None = None,
    record: dict[str, torch.Tensor] | None = None,
    blocks_path: str | None = None,
) -> Iterator[None]:
    """Every forward of `loaded.model` inside the block runs under `scheme` with `strategy`.

    `blocks` limits quantization to those blocks' Linears (sensitivity). With `record`, nothing is
    quantized: the max |transformed input| over non-kept tokens of each Linear is recorded (static scales).
    """
    if strategy == "best":
        raise MassactError("`best` is chosen by `massact.quant.run`; give a concrete strategy here")
    paths = None
    if blocks is not None:
        structure = find_structure(loaded.model, blocks_path)
        paths = [structure.block_path(i) for i in blocks]
    if scheme.granularity == "static" and scheme.act_bits is not None and record is None and static_scales is None:
        raise MassactError(f"scheme {scheme.name} needs static scales from calibration windows")
    plans = build_plans(loaded, scheme, strategy, calibration, alpha=alpha, blocks=paths, static_scales=static_scales)
    rotated = rotation_plan(loaded, calibration.probe, seed, blocks_path) if "rotate" in parts(strategy) else None
    kv, head_dim = _kv_modules(loaded, scheme, paths)
    if record is not None:
        kv = []
    keep_first, keep_ids = 0, []
    if "outlier-tokens" in parts(strategy) and calibration is not None:
        keep_first, keep_ids = calibration.first_positions, calibration.token_ids
    hooks = QuantHooks(loaded.model, scheme, plans, kv, head_dim, keep_first, keep_ids, record)
    with ExitStack() as stack:
        bits = scheme.weight_bits if record is None else None  # recording: transforms only, no rounding
        stack.enter_context(swapped_weights(loaded.model, plans, bits, scheme.group, rotated))
        stack.enter_context(hooks)
        yield
