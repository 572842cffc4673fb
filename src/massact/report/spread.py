"""Mean and spread of a number measured several times: on windows drawn with several seeds (`--seeds N`), or
over the seeds of trained variants (`massact experiment`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable


def moments(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max of `values` (NaN when any is not finite)."""
    finite = all(math.isfinite(v) for v in values)
    nan = math.nan
    return {
        "mean": statistics.fmean(values) if finite else nan,
        "std": (statistics.stdev(values) if len(values) > 1 else 0.0) if finite else nan,
        "min": min(values) if finite else nan,
        "max": max(values) if finite else nan,
    }


def spread(values: list[float]) -> dict:
    """Values over seeds with their `moments`: mean, sample standard deviation, min and max."""
    return {"values": values, **moments(values)}


def fmt_spread(values: dict, fmt: Callable[[float], str]) -> str:
    """`mean ± sd` with `fmt` for each number; `n/a` when not finite."""
    if not math.isfinite(values["mean"]):
        return "n/a"
    return f"{fmt(values['mean'])} ± {fmt(values['std'])}"


def seeds_note(seeds: list[int], columns: str, repeated: str) -> str:
    """The report's sentence on what the seed columns mean: `columns` from the first seed, `repeated` on each."""
    return (
        f"{columns}: the windows drawn with seed {seeds[0]}; mean ± sd: {repeated} repeated on the windows "
        f"drawn with seeds {', '.join(map(str, seeds))}."
    )
