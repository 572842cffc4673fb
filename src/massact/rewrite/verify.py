"""The checks every rewrite passes: float32 logits and perplexity unchanged, float16 and peaks before/after."""

from __future__ import annotations

import copy

import torch
from torch import nn

from massact.capture.forward import run_forward
from massact.interventions.perplexity import evaluate_perplexity
from massact.models.structure import find_structure
from massact.rewrite.measure import BlockPeaks, Nonfinite


@torch.inference_mode()
def logits_change(original: nn.Module, rewritten: nn.Module, windows: torch.Tensor, batch_size: int) -> dict:
    """Largest |logit difference| over all windows, against the largest |logit| of the original."""
    diff = 0.0
    peak = 0.0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size]
        a = run_forward(original, batch).logits.float()
        b = run_forward(rewritten, batch).logits.float()
        diff = max(diff, float((a - b).abs().max()))
        peak = max(peak, float(a.abs().max()))
    return {"max_abs_diff": diff, "max_abs": peak, "max_rel_diff": diff / peak if peak > 0 else diff}


def measure_model(
    model: nn.Module, windows: torch.Tensor, prefix_len: int, batch_size: int, blocks_path: str | None
) -> dict:
    """Float32 perplexity and per-block peaks; float16 perplexity and the modules with non-finite outputs."""
    structure = find_structure(model, blocks_path)
    peaks = BlockPeaks(model, structure)
    with peaks:
        fp32 = evaluate_perplexity(model, windows, batch_size, progress=False, prefix_len=prefix_len)
    half = copy.deepcopy(model).half()
    bad = Nonfinite(half)
    with bad:
        fp16 = evaluate_perplexity(half, windows, batch_size, progress=False, prefix_len=prefix_len)
    del half
    return {
        "perplexity_float32": fp32.perplexity,
        "perplexity_float16": fp16.perplexity,
        "nonfinite_tokens_float16": fp16.nonfinite_tokens,
        "nonfinite_modules_float16": len(bad.bad),
        "first_nonfinite_float16": bad.bad[0] if bad.bad else None,
        "block_peak": peaks.peak,
        "block_token_rms": peaks.token_rms,
    }
