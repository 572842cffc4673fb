"""How close a model's block outputs come to the largest finite value of low-precision formats."""

from __future__ import annotations

import math

FORMATS = {"fp16": 65504.0, "bf16": 3.3895313892515355e38, "fp8_e4m3": 448.0}


def headroom(peaks: list[float | None], nonfinite_blocks: list[int]) -> dict:
    """Per format: peak |x| / max finite value, and the first block whose output does not fit (None: all fit).

    `peaks` is the largest |x| of each block output (None when the block had nothing finite).
    """
    finite_peaks = [p for p in peaks if p is not None and math.isfinite(p)]
    peak = max(finite_peaks, default=None)
    out = {}
    for name, limit in FORMATS.items():
        over = [i for i, p in enumerate(peaks) if p is not None and p > limit] + list(nonfinite_blocks)
        out[name] = {
            "max_finite": limit,
            "peak_over_max": None if peak is None else peak / limit,
            "first_overflow_block": min(over) if over else None,
        }
    return out
