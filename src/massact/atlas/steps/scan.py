"""The atlas's scan step: massive sites on the prompt, peak ratio per block, fp16 / bf16 / fp8 headroom."""

from __future__ import annotations

from massact.atlas.context import Context, analysis
from massact.atlas.headroom import headroom
from massact.atlas.model_run import StepOutput
from massact.atlas.registry import atlas_step

SITE_KEYS = ("token", "token_text", "token_kind", "dim", "first_block", "last_block", "peak_value")


@atlas_step("scan", fields=("massive", "block_peak_ratio", "headroom"))
def scan_step(ctx: Context) -> dict:
    """Massive sites on the default prompt; peak ratio per block; fp16 / bf16 / fp8 headroom."""
    scan = analysis("scan")
    config = scan.ScanConfig(thresholds=ctx.config.thresholds, keep_peak=True)
    result = scan.run(ctx.loaded, ctx.config.prompt, config)
    ctx.outputs["scan"] = StepOutput(result, "scan.json")
    data = result.to_json()
    ctx.scan = data
    summary = data["summary"]
    ctx.first_block = summary["first_block"]
    blocks = data["blocks"]
    peaks = [b["top"][0]["magnitude"] if b["top"] else None for b in blocks]
    sites = summary["sites"]
    main = sites[0] if sites else None
    return {
        "massive": {
            "dims": summary["dims"],
            "token_kinds": sorted({s["token_kind"] for s in sites}),
            "tokens": [t["token_text"] for t in summary["tokens"]],
            "first_block": summary["first_block"],
            "last_block": summary["last_block"],
            "peak_value": main["peak_value"] if main else None,
            "peak_ratio": main["peak_ratio"] if main else None,
            "peak_block": main["peak_block"] if main else None,
            "sites": [{k: s[k] for k in SITE_KEYS} for s in sites],
        },
        "block_peak_ratio": [b.get("top1_ratio") for b in blocks],
        "headroom": headroom(peaks, data.get("nonfinite_blocks") or []),
    }
