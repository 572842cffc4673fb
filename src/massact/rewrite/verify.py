"""The checks every rewrite passes: float32 logits and perplexity unchanged, float16 and peaks before/after.

Each model is run once in float32 (perplexity, per-block peaks, and the logits of the first batch kept for
the comparison) and once in float16 (perplexity and the modules whose output holds inf or NaN): its weights
and buffers in float16 as `.half()` makes them, put in place for that pass only, so that a model read block
by block from its checkpoint is measured the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from massact.capture.hooks import HookSet
from massact.capture.peaks import BlockPeaks
from massact.errors import MassactError
from massact.models.edits import edited_parameters
from massact.models.structure import find_structure
from massact.perplexity import evaluate_perplexity
from massact.residual.plan import logits_change  # noqa: F401 (the check the rewrite runs)
from massact.rewrite.measure import Nonfinite


class _FirstLogits(HookSet):
    """The logits of the model's first forward call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.logits: torch.Tensor | None = None

    def forward_hooks(self):
        return [(self.model, self._hook)]

    def _hook(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.logits is None:
            self.logits = output.logits.detach().float().cpu()


def _half(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.half()


@contextmanager
def half_precision(model: nn.Module) -> Iterator[None]:
    """`model`'s floating-point parameters and buffers in float16 inside the block (as `.half()` makes them)."""
    buffers = [
        (module, name, buffer)
        for module in model.modules()
        for name, buffer in module._buffers.items()
        if buffer is not None and buffer.is_floating_point()
    ]
    meta = next((name for _, name, buffer in buffers if buffer.is_meta), None)
    if meta is not None:
        raise MassactError(
            f"the float16 check cannot convert the buffer {meta} of a model read block by block; load it with "
            "`offload='none'`"
        )
    try:
        for module, name, buffer in buffers:
            module._buffers[name] = buffer.half()
        with edited_parameters(model, [(p, _half) for p in model.parameters() if p.is_floating_point()]):
            yield
    finally:
        for module, name, buffer in buffers:
            module._buffers[name] = buffer


def measure_model(
    model: nn.Module,
    windows: torch.Tensor,
    prefix_len: int,
    batch_size: int,
    blocks_path: str | None = None,
) -> tuple[dict, torch.Tensor]:
    """(float32 perplexity and per-block peaks, float16 perplexity and non-finite modules; first batch's logits)."""
    structure = find_structure(model, blocks_path)
    peaks = BlockPeaks(model, structure, token_rms=True)
    first = _FirstLogits(model)
    with peaks, first:
        fp32 = evaluate_perplexity(model, windows, batch_size, progress=False, prefix_len=prefix_len)
    bad = Nonfinite(model)
    with half_precision(model), bad:
        fp16 = evaluate_perplexity(model, windows, batch_size, progress=False, prefix_len=prefix_len)
    measured = {
        "perplexity_float32": fp32.perplexity,
        "perplexity_float16": fp16.perplexity,
        "nonfinite_tokens_float16": fp16.nonfinite_tokens,
        "nonfinite_modules_float16": len(bad.bad),
        "first_nonfinite_float16": bad.bad[0] if bad.bad else None,
        "block_peak": peaks.peaks()[0],
        "block_token_rms": peaks.token_rms(),
    }
    return measured, first.logits
