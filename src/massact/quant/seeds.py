"""Mean and spread of quantization results over windows drawn with several seeds.

A perplexity measured on a few windows depends on which windows were drawn; with `--seeds N` the
whole measurement (calibration, baseline, every scheme and strategy, `best`'s choice) is repeated on
windows drawn with seeds `seed, seed + 1, ...`, and each number is reported as mean and spread.
"""

from __future__ import annotations

import math
import statistics


def spread(values: list[float]) -> dict:
    """Values over seeds with their mean, sample standard deviation, min and max (NaN when any is not finite)."""
    finite = all(math.isfinite(v) for v in values)
    nan = math.nan
    return {
        "values": values,
        "mean": statistics.fmean(values) if finite else nan,
        "std": (statistics.stdev(values) if len(values) > 1 else 0.0) if finite else nan,
        "min": min(values) if finite else nan,
        "max": max(values) if finite else nan,
    }


def summarize(seeds: list[int], baselines: list[float], draws: list[list[dict]]) -> dict:
    """The spread of the baseline and of every row's perplexity and ratio; `draws[k]` are seed k's rows."""
    rows = []
    for index, first in enumerate(draws[0]):
        same = [rows_k[index] for rows_k in draws]
        rows.append(
            {
                "scheme": first["scheme"],
                "strategy": first["strategy"],
                "perplexity": spread([r["perplexity"] for r in same]),
                "ratio": spread([r["ratio"] for r in same]),
                "chosen": [r.get("chosen") for r in same] if "chosen" in first else None,
            }
        )
    return {"seeds": seeds, "baseline": spread(baselines), "rows": rows}


def fmt_spread(values: dict, fmt) -> str:
    """`mean ± sd` with `fmt` for each number; `n/a` when not finite."""
    if not math.isfinite(values["mean"]):
        return "n/a"
    return f"{fmt(values['mean'])} ± {fmt(values['std'])}"
