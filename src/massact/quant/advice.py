"""The `massact rewrite` a quant run points to, in words that stay true.

Per scheme that quantizes Linears, the winning strategy is `best`'s choice where `best` ran, else the lowest
perplexity among the strategies run. A rotation or smoothing among the winners is suggested as the rewrite
that folds it into the weights, on the same windows (corpus, samples, length, calibration, seed, batch), and
the line says which scheme the rewrite's `--check-quant w8a8` measures: static per-tensor activation scales
(quant's `W8A8-static`, what optimum-quanto does), which this run may not have measured.
"""

from __future__ import annotations

import math
import shlex
from typing import TYPE_CHECKING

from massact.quant.schemes import parse_scheme
from massact.quant.strategies import BEST, parts
from massact.residual.suggest import command, line

if TYPE_CHECKING:
    from massact.quant.result import QuantResult

CHECK_SCHEME = "W8A8-static"  # what `rewrite --check-quant w8a8` simulates beside the real library
FOLDS = ("rotate", "smooth")  # the strategies a rewrite folds into the weights
SERVING = ("outlier-tokens", "keep-super-weights")  # parts no rewrite can fold: they are kept at run time


def winners(result: QuantResult) -> list[dict]:
    """Per scheme that quantizes Linear weights or inputs: its winning strategy, how it won, and its row."""
    won = []
    for scheme in dict.fromkeys(r["scheme"] for r in result.rows):
        if not parse_scheme(scheme).quantizes_linears:  # a rotation or smoothing changes no KV-cache number
            continue
        rows = [r for r in result.rows if r["scheme"] == scheme]
        if scheme in result.best:
            row = next(r for r in rows if r["strategy"] == BEST)
            won.append({"scheme": scheme, "strategy": result.best[scheme]["chosen"], "by": "best", "row": row})
            continue
        finite = [r for r in rows if math.isfinite(r["perplexity"])]
        if finite:
            row = min(finite, key=lambda r: r["perplexity"])
            won.append({"scheme": scheme, "strategy": row["strategy"], "by": "lowest", "row": row})
    return won


def _change(row: dict) -> str:
    ratio = row["ratio"]
    return f"{ratio - 1:+.1%}" if math.isfinite(ratio) else "n/a"


def _said(win: dict) -> str:
    """`W8A8 (dynamic per-tensor): outlier-tokens+rotate, chosen by best (+1.0% vs unquantized)`."""
    how = "chosen by `best`" if win["by"] == "best" else "the lowest perplexity of the strategies run"
    return f"{parse_scheme(win['scheme']).described}: {win['strategy']}, {how} ({_change(win['row'])} vs unquantized)"


def window_options(result: QuantResult) -> str:
    """The rewrite options that draw the windows this run measured on (`load_inputs` draws the same ones)."""
    args = ["--corpus", result.corpus, "--samples", str(result.windows[0]), "--seq-len", str(result.windows[1])]
    args += ["--calib-samples", str(result.calibration_windows[0]), "--seed", str(result.seed)]
    args += ["--batch-size", str(result.config.batch_size)]
    if result.config.blocks_path:
        args += ["--blocks", result.config.blocks_path]
    return shlex.join(args)


def rewrite_advice(result: QuantResult) -> str:
    """One paragraph: the rewrite to try and why, and what its check measures; or why no rewrite is suggested."""
    won = winners(result)
    if not won:
        return line([], "no scheme here quantizes Linear weights or inputs with a finite result, and a rotation or "
                    "smoothing changes nothing else")  # fmt: skip
    folding = [w for w in won if set(FOLDS) & parts(w["strategy"])]
    if not folding:
        tried = {p for r in result.rows for p in parts(r.get("chosen") or r["strategy"])} | {
            p for b in result.best.values() for p in parts(b["chosen"])
        }
        if result.best or set(FOLDS) & tried:
            why = "the winning strategies fold no rotation or smoothing into the weights"
        else:
            why = "no strategy run here is one a rewrite folds (rotate, smooth): add them or best to --strategies"
        return line([], f"{why} ({'; '.join(_said(w) for w in won)})")
    refused = result.rewrites or {}
    won_folds = [f for f in FOLDS if any(f in parts(w["strategy"]) for w in folding)]  # rotate first
    accepted = [f for f in won_folds if refused.get(f) is None]
    if not accepted:
        why = "; ".join(f"{f} won ({'; '.join(_said(w) for w in folding)}), but {refused[f]}" for f in won_folds)
        return line([], why)
    fold = accepted[0]
    folding = [w for w in folding if fold in parts(w["strategy"])]
    option = "--rotate" if fold == "rotate" else f"--smooth {result.config.alpha:g}"
    no_check = refused.get("check_quant")
    checked = "" if no_check else " --check-quant w8a8"
    suggested = command(result.model, f"{option}{checked} {window_options(result)}")
    notes = [f"Why: {'; '.join(_said(w) for w in folding)}."]
    if no_check:
        notes.append(f"It leaves --check-quant out: {no_check}.")
    kept = sorted({p for w in folding for p in parts(w["strategy"]) if p in SERVING})
    if kept:
        noun = {"rotate": "rotation", "smooth": "smoothing"}[fold]
        notes.append(f"The rewrite folds only the {noun}; {' and '.join(kept)} stays a run-time choice.")
    if result.seed != result.config.seed and fold == "rotate":
        notes.append(f"Its --seed {result.seed} draws these windows and also seeds its rotation (here seed "
                     f"{result.config.seed}).")  # fmt: skip
    if no_check:
        return f"{line([suggested], '')} {' '.join(notes)}"
    check = f"Its --check-quant w8a8 measures {CHECK_SCHEME} ({parse_scheme(CHECK_SCHEME).act_label} scales"
    measured = next((w for w in won if w["scheme"] == CHECK_SCHEME), None)
    if measured is not None and fold in parts(measured["strategy"]):
        notes.append(f"{check}), which this run measured too: {_said(measured)}.")
    elif measured is not None:
        notes.append(
            f"{check}), where this run found {measured['strategy']} best ({_change(measured['row'])} vs "
            f"unquantized), not {fold}: expect the check to show little gain from it."
        )
    else:
        here = ", ".join(sorted({parse_scheme(w["scheme"]).described for w in folding}))
        notes.append(
            f"{check}: fixed on calibration windows, as a real int8 library sets them), not the {here} measured "
            f"here, so expect another number; add {CHECK_SCHEME} to --schemes to measure it first."
        )
    return f"{line([suggested], '')} {' '.join(notes)}"
