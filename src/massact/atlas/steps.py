"""One model through each analysis, through their public entry points; each step yields the atlas fields.

A step that cannot run (an analysis missing from this install, a model it does not support) raises;
the caller records its fields as null with the reason. Each step keeps its result in `ctx.outputs`,
written as its own run folder when the atlas is written.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

from massact.atlas.config import AtlasConfig
from massact.atlas.headroom import headroom
from massact.atlas.model_run import CorpusOutput, StepOutput
from massact.models.dims import model_dims
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure

W8A8 = "W8A8"
OUTLIER_STRATEGY = "outlier-tokens"
SITE_KEYS = ("token", "token_text", "token_kind", "dim", "first_block", "last_block", "peak_value")


@dataclass
class Context:
    """What later steps reuse from earlier ones."""

    loaded: LoadedModel
    config: AtlasConfig
    scan: dict | None = None
    first_block: int | None = None
    extra: dict = field(default_factory=dict)
    outputs: dict[str, StepOutput] = field(default_factory=dict)  # step -> its result, written as a run folder


def _analysis(name: str):
    """An analysis package, or an error that says it is not part of this install."""
    try:
        return importlib.import_module(f"massact.{name}")
    except ImportError as exc:
        raise RuntimeError(f"massact.{name} is not available ({exc})") from None


def describe(ctx: Context) -> dict:
    """Architecture, blocks, hidden size, parameter count and the rewrites the model accepts."""
    model = ctx.loaded.model
    dims = model_dims(model)
    config = getattr(model, "config", None)
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "num_blocks": len(find_structure(model)),
        "hidden_size": dims.hidden_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rewrites": rewrites(ctx),
    }


def rewrites(ctx: Context) -> dict:
    """Per rewrite (rescale, smooth, rotate, check_quant): None when `massact rewrite` accepts it for this
    model, else the line it refuses it with; the atlas suggests only accepted rewrites."""
    from massact.residual.support import REWRITES, refusals

    ids = ctx.loaded.tokenizer(ctx.config.prompt, return_tensors="pt")["input_ids"]
    try:
        return refusals(ctx.loaded, ids)
    except Exception as exc:  # a model the rewrite cannot map: no rewrite is suggested for it, with the reason
        text = str(exc).strip().splitlines()
        why = f"the rewrite cannot map this model ({text[0] if text else type(exc).__name__})"
        return dict.fromkeys((*REWRITES, "check_quant"), why)


def scan_step(ctx: Context) -> dict:
    """Massive sites on the default prompt; peak ratio per block; fp16 / bf16 / fp8 headroom."""
    scan = _analysis("scan")
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


def corpus_step(ctx: Context) -> dict:
    """How constant the massive sites are over corpus windows: frequency, mean and coefficient of variation."""
    corpus = _analysis("corpus")
    corpora = _analysis("data.corpus")
    cfg = ctx.config
    windows = corpora.load_windows(ctx.loaded.tokenizer, cfg.corpus, cfg.samples, cfg.seq_len, seed=cfg.seed)
    config = corpus.CorpusConfig(thresholds=cfg.thresholds, progress=False)
    summary = corpus.run(ctx.loaded, corpus.CorpusInputs(cfg.corpus, windows=windows), config).summary
    ctx.outputs["corpus"] = CorpusOutput(summary, "corpus.json")
    dims = set((ctx.scan or {}).get("summary", {}).get("dims", []))
    best: dict[tuple[int, str], dict] = {}
    for row in summary.site_rows():
        key = (row["dim"], row["token_kind"])
        if (not dims or row["dim"] in dims) and abs(row["mean"]) > abs(best.get(key, {"mean": 0.0})["mean"]):
            best[key] = row
    rows = sorted(best.values(), key=lambda r: -abs(r["mean"]))
    return {
        "constancy": {
            "corpus": cfg.corpus,
            "windows": int(windows.shape[0]),
            "seq_len": int(windows.shape[1]),
            "sites": [
                {
                    **{k: r[k] for k in ("dim", "token_kind", "block", "sequences", "frequency", "mean", "std")},
                    "cv": r["cv"] if r["sequences"] >= 2 else None,  # one window says nothing of constancy
                }
                for r in rows
            ],
        }
    }


def trace_step(ctx: Context) -> dict:
    """The super-weight coordinates (module, [row, col]) that write each main site, and their share of the jump."""
    trace = _analysis("trace")
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


def _mean(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def attention_step(ctx: Context) -> dict:
    """Fraction of sink heads in the blocks up to the first massive block and in the blocks after it."""
    attention = _analysis("attention")
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


def quant_step(ctx: Context) -> dict:
    """W8A8 per-tensor perplexity / unquantized perplexity, with and without the outlier tokens kept aside."""
    quant = _analysis("quant")
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


STEP_FUNCTIONS = {
    "scan": scan_step,
    "corpus": corpus_step,
    "trace": trace_step,
    "attention": attention_step,
    "quant": quant_step,
}
STEP_FIELDS = {
    "scan": ("massive", "block_peak_ratio", "headroom"),
    "corpus": ("constancy",),
    "trace": ("super_weights",),
    "attention": ("sink_heads",),
    "quant": ("w8a8",),
}
