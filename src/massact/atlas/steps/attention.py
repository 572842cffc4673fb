"""The atlas's attention step: the share of sink heads before and after the first massive block."""

from __future__ import annotations

import math

from massact.atlas.context import Context, analysis
from massact.atlas.model_run import StepOutput
from massact.atlas.registry import atlas_step


def _mean(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else None


@atlas_step("attention", fields=("sink_heads",), after=("trace",))
def attention_step(ctx: Context) -> dict:
    """Fraction of sink heads in the blocks up to the first massive block and in the blocks after it."""
    attention = analysis("attention")
    options = attention.AttentionConfig(thresholds=ctx.config.thresholds)
    result = attention.run(ctx.loaded, ctx.config.prompt, options)
    ctx.outputs["attention"] = StepOutput(result, "attention.json")
    rows = result.to_json()["blocks"]
    first = result.first_massive_block
    split = first + 1 if first is not None else len(rows)
    return {
        "sink_heads": {
            "first_massive_block": first,
            "before": _mean([r["sink_fraction"] for r in rows[:split]]),
            "after": _mean([r["sink_fraction"] for r in rows[split:]]) if first is not None else None,
        }
    }
