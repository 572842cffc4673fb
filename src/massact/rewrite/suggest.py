"""The `massact rewrite` command line that answers what another analysis found (quant, atlas)."""

from __future__ import annotations

import re
import shlex

BUNDLED_NAME = "SmolLM2-135M-Instruct"  # the name `load_model("default")` gives the bundled model
HEADROOM = 0.5  # rescale when a block output passes this fraction of the float16 maximum


def command(model: str, options: str) -> str:
    """`massact rewrite MODEL OPTIONS --out DIR`, ready to paste."""
    argument = "default" if model == BUNDLED_NAME else model
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", argument.rstrip("/").rsplit("/", 1)[-1]) or "model"
    return f"massact rewrite {shlex.quote(argument)} {options} --out {shlex.quote(folder + '-rewritten')}"


def for_strategies(model: str, chosen: list[str], alpha: float) -> str | None:
    """The rewrite that folds the strategy the simulation chose (rotate or smooth) into the weights."""
    parts = {p for name in chosen for p in name.split("+")}
    if "rotate" in parts:
        return command(model, "--rotate --check-quant w8a8")
    if "smooth" in parts:
        return command(model, f"--smooth {alpha:g} --check-quant w8a8")
    return None


def for_headroom(model: str, peak_over_max: float | None, overflows: bool) -> str | None:
    """`--rescale auto` when the block outputs come near the float16 maximum or pass it."""
    if overflows or (peak_over_max is not None and peak_over_max > HEADROOM):
        return command(model, "--rescale auto")
    return None


def line(commands: list[str], none: str) -> str:
    """One closing line for a report: the rewrite to try, or (`none`) why no rewrite is suggested."""
    if not commands:
        return f"No rewrite suggested: {none}."
    return "Rewrite to try (its --check-quant says whether a real int8 library agrees): " + "; ".join(
        f"`{c}`" for c in commands
    )
