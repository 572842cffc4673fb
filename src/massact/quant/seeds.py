"""Mean and spread of quantization results over windows drawn with several seeds.

A perplexity measured on a few windows depends on which windows were drawn; with `--seeds N` the
whole measurement (calibration, baseline, every scheme and strategy, `best`'s choice) is repeated on
windows drawn with seeds `seed, seed + 1, ...`, and each number is reported as mean and spread.
"""

from __future__ import annotations

from massact.report.spread import spread


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
