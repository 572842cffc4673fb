"""Figures in the style of the paper: layer-wise magnitudes and a 3D view of one block."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator
from mpl_toolkits.mplot3d.art3d import Line3DCollection

from massact.format import show_token


def wrap_title(title: str, width: int) -> str:
    """A figure title broken into lines of at most `width` characters (long model paths stay inside the figure)."""
    return "\n".join(textwrap.wrap(title, width, break_long_words=True, break_on_hyphens=False)) or title


TITLE_WIDTH = 60  # characters per title line that fit a 7-inch figure at the default font size
MINOR_2_5_DECADES = 2  # a log axis over this many decades or more gets minor ticks at 2 and 5 only


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def decade_label(value: float, _position: int | None = None) -> str:
    """A major tick of a base-10 log axis (always a power of ten) as plain text: 1000 -> "10³", 0.01 -> "10⁻²"."""
    return "10" + str(round(math.log10(value))).translate(_SUPERSCRIPT)


def log_scale_or_note(ax, values: Sequence[float], axis: str = "y") -> bool:
    """A log scale on `axis` when some value is finite and positive; otherwise a linear axis and a note on the plot.

    matplotlib refuses a log scale with nothing positive to show (all-NaN results of a float16 overflow);
    the figure then says why it is empty instead of failing. True when the log scale was set.
    """
    data = np.asarray(list(values), dtype=float)
    positive = data[np.isfinite(data) & (data > 0)]
    if positive.size:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        scaled = ax.yaxis if axis == "y" else ax.xaxis
        scaled.set_major_formatter(FuncFormatter(decade_label))  # the same "10³" without a mathtext parse
        if np.log10(positive.max() / positive.min()) >= MINOR_2_5_DECADES:
            # minor ticks at 2 and 5 of each decade, not 2..9: as readable over several decades, and a
            # third fewer tick objects for matplotlib to lay out twice (a quarter of a figure's time)
            scaled.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        return True
    ax.text(
        0.5,
        0.5,
        "no finite values to plot (inf/NaN: see the precision note in report.md)",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color="C3",
    )
    return False


def save_figure(fig, path: Path, dpi: float | None = None, tight: bool = True) -> Path:
    """Lay `fig` out tightly (`tight=False`: the caller has placed its axes), save it as `path`, close it.

    `tight_layout` leaves a placeholder layout engine on the figure, and `savefig` draws a figure that
    has one a second time before drawing it for real. The layout is final by then: dropping the engine
    first gives the same PNG, byte for byte, about a quarter faster.
    """
    if tight:
        fig.tight_layout()
    fig.set_layout_engine(None)
    fig.savefig(path, dpi=dpi)  # None: matplotlib's savefig.dpi setting, as before
    return path


SERIES_STYLE = {"top 1": "C3", "top 2": "C1", "top 3": "C2", "median": "C0"}


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    log: bool = True,
    colors: dict[str, str] | None = None,
    spread: dict[str, Sequence[float]] | None = None,
) -> Path:
    """Named (x, y) curves on one axis, log scale by default; optional +-spread bands around named curves."""
    colors = colors or {}
    fig = Figure(figsize=(7, 4), dpi=150)
    ax = fig.subplots()
    for name, (xs, ys) in curves.items():
        x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if y.size and np.isnan(y).all():  # e.g. top 2 with --top-k 1: no line, no legend entry
            continue
        color = colors.get(name)
        ax.plot(x, y, marker="o", markersize=3, label=name, color=color)
        if spread and name in spread:
            s = np.asarray(spread[name], dtype=float)
            ax.fill_between(x, np.clip(y - s, 1e-6, None), y + s, alpha=0.2, color=color)
    if log:
        log_scale_or_note(ax, [y for _, ys in curves.values() for y in ys])
    if all(float(x).is_integer() for xs, _ in curves.values() for x in xs):  # blocks, steps: no 0.5 ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(wrap_title(title, TITLE_WIDTH))
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return save_figure(fig, path)


def plot_layerwise(
    series: dict[str, Sequence[float]],
    path: Path,
    title: str,
    spread: dict[str, Sequence[float]] | None = None,
    xlabel: str = "block",
) -> Path:
    """Per-block curves (log scale), e.g. top-1/2/3 magnitudes and the median; optional +-spread bands."""
    curves = {name: (range(len(values)), values) for name, values in series.items()}
    return plot_curves(curves, path, title, xlabel, "magnitude", colors=SERIES_STYLE, spread=spread)


def plot_activations_3d(
    hidden: torch.Tensor,
    tokens: Sequence[str],
    path: Path,
    title: str,
    highlight_dims: Sequence[int] = (),
    max_tokens: int = 32,
) -> Path:
    """|activation| over tokens x feature dims of one block output [tokens, dims], one stem per entry."""
    mags = np.nan_to_num(hidden.detach().float().abs().cpu().numpy()[:max_tokens], nan=0.0, posinf=0.0)
    n_tokens, n_dims = mags.shape
    tt, dd = np.meshgrid(np.arange(n_tokens), np.arange(n_dims), indexing="ij")
    starts = np.stack([tt.ravel(), dd.ravel(), np.zeros(tt.size)], axis=1)
    ends = np.stack([tt.ravel(), dd.ravel(), mags.ravel()], axis=1)
    colors = matplotlib.colormaps["tab10"](tt.ravel() % 10)
    fig = Figure(figsize=(8, 6), dpi=150)
    ax = fig.add_subplot(projection="3d")
    ax.add_collection3d(Line3DCollection(np.stack([starts, ends], axis=1), colors=colors, linewidths=1.2))
    ax.set_xlim(-0.5, n_tokens - 0.5)
    ax.set_ylim(0, n_dims)
    ax.set_zlim(0, float(mags.max()) * 1.05 if mags.size else 1.0)
    labels = [show_token(t) for t in tokens[:n_tokens]]
    ax.set_xticks(np.arange(n_tokens))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ticks, tick_labels, highlighted = dim_ticks(n_dims, highlight_dims)
    ax.set_yticks(ticks)
    ax.set_yticklabels(tick_labels, fontsize=7)
    for label, marked in zip(ax.get_yticklabels(), highlighted):
        if marked:
            label.set_color("C3")
            label.set_fontweight("bold")
    ax.set_ylabel("feature dim", labelpad=10)
    ax.set_zlabel("|activation|")
    ax.set_title(wrap_title(title, 80))
    ax.view_init(elev=20, azim=-60)
    return save_figure(fig, path)


def dim_ticks(n_dims: int, highlight: Sequence[int], regular: int = 5) -> tuple[list[int], list[str], list[bool]]:
    """Feature-dim ticks: a few round ones for scale plus every highlighted (massive) dim, none overlapping.

    Highlighted dims closer than 4% of the axis to the previous one share its label ("507/510"); round
    ticks within 12% of a highlighted dim are dropped (labels on a tilted 3D axis need the room).
    """
    gap = max(1.0, 0.04 * n_dims)
    groups: list[list[int]] = []
    for dim in sorted({int(d) for d in highlight if 0 <= int(d) < n_dims}):
        if groups and dim - groups[-1][-1] < gap:
            groups[-1].append(dim)
        else:
            groups.append([dim])
    marked = [(g[0], "/".join(map(str, g)), True) for g in groups]
    step = MaxNLocator(nbins=regular, integer=True).tick_values(0, max(n_dims - 1, 1))
    round_ticks = [int(t) for t in step if 0 <= t < n_dims]
    plain = [(t, str(t), False) for t in round_ticks if all(abs(t - m) >= 3 * gap for m, _, _ in marked)]
    rows = sorted(marked + plain)
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
