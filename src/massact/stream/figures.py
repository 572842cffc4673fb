"""The running-perplexity figure: one curve per policy against the token index (StreamingLLM, Fig. 3)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from massact.report.figures import log_scale_or_note, save_figure


def plot_running_perplexity(curves: dict[str, tuple[list[int], list[float]]], path: Path, title: str) -> Path:
    """`curves`: policy -> (token indices, running perplexity); log-scale y."""
    fig = Figure(figsize=(8, 4.5), dpi=150)
    ax = fig.subplots()
    for name, (tokens, values) in curves.items():
        if tokens:
            ax.plot(tokens, values, label=name, linewidth=1.4)
    log_scale_or_note(ax, [v for _, values in curves.values() for v in values])
    ax.set_xlabel("stream token index")
    ax.set_ylabel("running perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_figure(fig, path)
