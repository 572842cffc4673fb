"""The atlas's trace step: the super weights that write each main massive site."""

from __future__ import annotations

from massact.atlas.context import Context, analysis
from massact.atlas.model_run import StepOutput
from massact.atlas.registry import atlas_step


@atlas_step("trace", fields=("super_weights",), after=("corpus",))
def trace_step(ctx: Context) -> dict:
    """The super-weight coordinates (module, [row, col]) that write each main site, and their share of the jump."""
    trace = analysis("trace")
    cfg = ctx.config
    config = trace.TraceConfig(
        thresholds=cfg.thresholds, verify=False, corpus=cfg.corpus, samples=cfg.samples, seq_len=cfg.seq_len
    )
    result = trace.run(ctx.loaded, cfg.prompt, config)
    ctx.outputs["trace"] = StepOutput(result, "trace.json")
    weights = []
    for site in result.to_json()["sites"]:
        entries = site.get("entries") or []
        top = entries[0] if entries else None
        weights.append(
            {
                "token": site["token"],
                "dim": site["dim"],
                "block": site["block"],
                "module": site.get("module"),
                "coordinates": [top["row"], top["column"]] if top else None,
                "share_of_jump": top["share_of_jump"] if top else None,
                "entries_needed": site.get("entries_needed"),
            }
        )
    return {"super_weights": weights}
