"""The `massact rewrite` command line that answers what another analysis found (quant, atlas).

Each command saves into its own folder, named after the model and the rewrite (`NAME-rescaled`,
`NAME-rotated`, `NAME-smoothed`), so two suggestions for one model never write to the same `--out`.
`for_int8` and `for_headroom` take the model's `refusals` (`residual.support`) where the caller has them and
then suggest only what the rewrite accepts for that model.
"""

from __future__ import annotations

import re
import shlex

BUNDLED_NAME = "SmolLM2-135M-Instruct"  # the name `load_model("default")` gives the bundled model
HEADROOM = 0.5  # rescale when a block output passes this fraction of the float16 maximum
SMOOTH_ALPHA = 0.5  # SmoothQuant's alpha, where no analysis chose one
FOLDERS = (("--rotate", "rotated"), ("--smooth", "smoothed"), ("--rescale", "rescaled"))  # --out per rewrite


def command(model: str, options: str, flags: str = "") -> str:
    """`massact rewrite MODEL OPTIONS [FLAGS] --out NAME-REWRITE`, ready to paste (FLAGS: how to load MODEL)."""
    argument = "default" if model == BUNDLED_NAME else model
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", argument.rstrip("/").rsplit("/", 1)[-1]) or "model"
    words = options.split()
    kinds = "-".join(kind for flag, kind in FOLDERS if flag in words) or "rewritten"
    loading = f" {flags}" if flags else ""
    return f"massact rewrite {shlex.quote(argument)} {options}{loading} --out {shlex.quote(f'{folder}-{kinds}')}"


def for_strategies(model: str, chosen: list[str], alpha: float) -> str | None:
    """The rewrite that folds the strategy the simulation chose (rotate or smooth) into the weights."""
    parts = {p for name in chosen for p in name.split("+")}
    if "rotate" in parts:
        return command(model, "--rotate --check-quant w8a8")
    if "smooth" in parts:
        return command(model, f"--smooth {alpha:g} --check-quant w8a8")
    return None


def _check(refused: dict | None) -> str:
    """` --check-quant w8a8` where the rewrite accepts it for the model."""
    return "" if (refused or {}).get("check_quant") else " --check-quant w8a8"


def for_int8(model: str, refused: dict | None = None, flags: str = "") -> tuple[str | None, str | None]:
    """(the rewrite to try for a costly int8, why none is) : rotate where the model takes it, else smooth."""
    refused = refused or {}
    if refused.get("rotate") is None:
        return command(model, f"--rotate{_check(refused)}", flags), None
    if refused.get("smooth") is None:
        return command(model, f"--smooth {SMOOTH_ALPHA:g}{_check(refused)}", flags), None
    return None, f"int8 is costly, but {refused['rotate']}; and {refused['smooth']}"


def for_headroom(
    model: str, peak_over_max: float | None, overflows: bool, refused: dict | None = None, flags: str = ""
) -> str | None:
    """`--rescale auto` when the block outputs come near the float16 maximum or pass it (and the model takes it)."""
    if (refused or {}).get("rescale") is not None:
        return None
    if overflows or (peak_over_max is not None and peak_over_max > HEADROOM):
        return command(model, "--rescale auto", flags)
    return None


def line(commands: list[str], none: str) -> str:
    """One closing line for a report: the rewrite to try, or (`none`) why no rewrite is suggested."""
    if not commands:
        return f"No rewrite suggested: {none}."
    checked = any("--check-quant" in c for c in commands)
    lead = "Rewrite to try" + (" (its --check-quant says whether a real int8 library agrees)" if checked else "")
    return f"{lead}: " + "; ".join(f"`{c}`" for c in commands)
