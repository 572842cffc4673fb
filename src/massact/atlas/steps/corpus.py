"""The atlas's corpus step: how constant the massive sites are over corpus windows."""

from __future__ import annotations

from massact.atlas.context import Context, analysis
from massact.atlas.model_run import CorpusOutput
from massact.atlas.registry import atlas_step


@atlas_step("corpus", fields=("constancy",), after=("scan",))  # keeps to the scan's dims
def corpus_step(ctx: Context) -> dict:
    """How constant the massive sites are over corpus windows: frequency, mean and coefficient of variation."""
    corpus = analysis("corpus")
    corpora = analysis("data.corpus")
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
