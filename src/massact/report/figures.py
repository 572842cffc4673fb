"""Figures in the style of the paper: layer-wise magnitudes and a 3D view of one block."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Line3DCollection  # noqa: E402

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
    fig, ax = plt.subplots(figsize=(7, 4), dpi=150)
    for name, (xs, ys) in curves.items():
        x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        color = colors.get(name)
        ax.plot(x, y, marker="o", markersize=3, label=name, color=color)
        if spread and name in spread:
            s = np.asarray(spread[name], dtype=float)
            ax.fill_between(x, np.clip(y - s, 1e-6, None), y + s, alpha=0.2, color=color)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
    mags = hidden.detach().float().abs().cpu().numpy()[:max_tokens]
    n_tokens, n_dims = mags.shape
    tt, dd = np.meshgrid(np.arange(n_tokens), np.arange(n_dims), indexing="ij")
    starts = np.stack([tt.ravel(), dd.ravel(), np.zeros(tt.size)], axis=1)
    ends = np.stack([tt.ravel(), dd.ravel(), mags.ravel()], axis=1)
    colors = plt.get_cmap("tab10")(tt.ravel() % 10)
    fig = plt.figure(figsize=(8, 6), dpi=150)
    ax = fig.add_subplot(projection="3d")
    ax.add_collection3d(Line3DCollection(np.stack([starts, ends], axis=1), colors=colors, linewidths=1.2))
    ax.set_xlim(-0.5, n_tokens - 0.5)
    ax.set_ylim(0, n_dims)
    ax.set_zlim(0, float(mags.max()) * 1.05 if mags.size else 1.0)
    labels = [t.replace("\n", "\\n") for t in tokens[:n_tokens]]
    ax.set_xticks(np.arange(n_tokens))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    if highlight_dims:
        ax.set_yticks(sorted(set(highlight_dims)))
        ax.set_yticklabels([str(d) for d in sorted(set(highlight_dims))], fontsize=7)
    ax.set_ylabel("feature dim")
    ax.set_zlabel("|activation|")
    ax.set_title(title)
    ax.view_init(elev=20, azim=-60)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
