"""The atlas's quant step: what simulated W8A8 costs in perplexity, with and without the outlier tokens kept."""

from __future__ import annotations

from massact.atlas.context import Context, analysis
from massact.atlas.model_run import StepOutput
from massact.atlas.registry import atlas_step

W8A8 = "W8A8"
OUTLIER_STRATEGY = "outlier-tokens"


@atlas_step("quant", fields=("w8a8",), after=("attention",))
def quant_step(ctx: Context) -> dict:
    """W8A8 per-tensor perplexity / unquantized perplexity, with and without the outlier tokens kept aside."""
    quant = analysis("quant")
    cfg = ctx.config
    inputs = quant.load_inputs(ctx.loaded, cfg.corpus, cfg.samples, cfg.seq_len, calib_samples=2, seed=cfg.seed)
    config = quant.QuantConfig(
        schemes=(W8A8,), strategies=("none", OUTLIER_STRATEGY), sensitivity=None, thresholds=cfg.thresholds
    )
    result = quant.run(ctx.loaded, inputs, config)
    ctx.outputs["quant"] = StepOutput(result, "quant.json")
    data = result.to_json()
    ratios = {row["strategy"]: row["ratio"] for row in data["rows"]}
    return {
        "w8a8": {
            "baseline_perplexity": data["baseline"]["perplexity"],
            "ratio": ratios.get("none"),
            "ratio_outlier_tokens_kept": ratios.get(OUTLIER_STRATEGY),
        }
    }
