"""Attention figures: a heatmap with token strings on both axes, per-block sink curves, C-part constancy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from massact.format import show_token
from massact.report.figures import save_figure, wrap_title


def _label(token: str) -> str:
    return show_token(token)


def plot_attention_map(
    matrix: torch.Tensor, tokens: Sequence[str], path: Path, title: str, colorbar: str = "attention probability"
) -> Path:
    """A [queries, keys] map (masked entries NaN or 0) with token strings on both axes."""
    data = matrix.float().numpy()
    n = data.shape[0]
    labels = [_label(t) for t in tokens[:n]]
    size = max(5.0, min(16.0, 0.22 * n + 2.5))
    fig = Figure(figsize=(size, size * 0.9), dpi=150)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="equal")
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    fontsize = 7 if n <= 48 else 5
    ax.set_xticklabels(labels, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(labels, fontsize=fontsize)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(wrap_title(title, 90))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=colorbar)
    return save_figure(fig, path)


def _series_plot(
    series: dict[str, Sequence[float | None]], path: Path, title: str, ylabel: str, first_massive: int | None
) -> Path:
    fig = Figure(figsize=(9, 4), dpi=150)
    ax = fig.subplots()
    for name, values in series.items():
        y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        ax.plot(np.arange(len(y)), y, marker="o", markersize=3, label=name)
    if first_massive is not None:
        ax.axvline(
            first_massive, color="grey", linestyle="--", linewidth=1, label=f"massive from block {first_massive}"
        )
    ax.set_xlabel("block")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(wrap_title(title, 90))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def plot_sinks(
    rows: list[dict], path: Path, title: str, first_massive: int | None, c_name: str = "massive tokens"
) -> Path:
    """Per block: sink-head fraction, first-token importance and attention mass on the tokens C (`c_name`)."""
    first = [r["first_token_importance"] for r in rows]
    mass = [r["massive_mass"] for r in rows]
    series = {"sink-head fraction": [r["sink_fraction"] for r in rows]}
    same = all(
        a is None and b is None or (a is not None and b is not None and abs(a - b) < 1e-6) for a, b in zip(first, mass)
    )
    if same:  # C is the first token alone: one line, not one hidden under the other
        series[f"first-token importance = mass on {c_name}"] = mass
    else:
        series["first-token importance"] = first
        series[f"mass on {c_name}"] = mass
    return _series_plot(series, path, title, "fraction / probability", first_massive)


def plot_constancy(rows: list[dict], path: Path, title: str, first_massive: int | None) -> Path:
    """Per block: how constant the massive tokens' part of the attention output is, and what replacing it does."""
    series = {
        "C part: cosine to its mean": [r["block_c_cosine"] for r in rows],
        "C part: relative variance": [r["block_c_relvar"] for r in rows],
        "C part: share of output norm": [r["block_c_share"] for r in rows],
        "rest: cosine to its mean": [r["block_rest_cosine"] for r in rows],
        "block change, C -> its mean": [r["replace_mean_change"] for r in rows],
        "block change, C removed": [r["replace_zero_change"] for r in rows],
    }
    return _series_plot(series, path, title, "value", first_massive)
