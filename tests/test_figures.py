"""Figures read right: integer ticks where counts are integers, no offset labels, titles that fit, tick
labels that do not overlap, the mean line of what is plotted, and the 3D view of the peak block."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from planting import MARK, VOCAB, plant_massive, tiny_model, word_tokenizer

from massact.corpus.report import plot_constancy
from massact.corpus.run import corpus_scan
from massact.models.loading import LoadedModel
from massact.quant.result import QuantResult
from massact.report.figures import plot_layerwise, save_figure
from massact.scan import ScanConfig, run

FAMILIES = {"gemma": True, "qwen2": False}  # family -> its tokenizer adds a BOS


@pytest.fixture
def figures(monkeypatch) -> list:
    """Every figure the code under test saves, kept for inspection."""
    kept: list = []
    savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        kept.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return kept


def _loaded(family: str, plants: list[tuple[int, int, float]]) -> LoadedModel:
    model = tiny_model(family)
    for block, dim, gain in plants:
        plant_massive(model, block=block, dim=dim, gain=gain)
    return LoadedModel(model=model, tokenizer=word_tokenizer(lambda i: f"w{i}", FAMILIES[family]), name=family)


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("family", FAMILIES)
def test_constancy_figure_plots_its_own_mean_with_integer_sequences_and_no_offset(family, figures, tmp_path):
    loaded = _loaded(family, [(1, 5, 400.0)])
    windows = torch.randint(10, VOCAB, (5, 12), generator=torch.Generator().manual_seed(0))
    windows[:, 0] = MARK  # position 0 sees only itself: the same massive value in every window
    summary = corpus_scan(loaded, windows, batch_size=5, progress=False)
    plot_constancy(summary, tmp_path / "constancy.png")
    (fig,) = figures
    fig.canvas.draw()
    points_ax, hist_ax = fig.axes[0], fig.axes[1]
    points, mean_line = points_ax.lines[0], points_ax.lines[1]
    assert mean_line.get_ydata()[0] == pytest.approx(float(np.mean(points.get_ydata())))
    assert all(float(t).is_integer() for t in points_ax.get_xticks())
    assert hist_ax.xaxis.get_offset_text().get_text() == ""
    assert [t.get_text() for t in points_ax.get_legend().get_texts()] == [
        "each sequence's largest-|x| value",
        "mean of these points",
    ]


def test_long_layerwise_title_stays_inside_the_figure(figures, tmp_path):
    title = "HuggingFaceTB/SmolLM2-135M-Instruct-Q4_1-gguf: 64 sequences (mean, band = 1 std)"
    plot_layerwise({"top 1": [1.0, 10.0, 100.0], "median": [1.0, 1.0, 1.0]}, tmp_path / "l.png", title)
    (fig,) = figures
    fig.canvas.draw()
    box, frame = fig.axes[0].title.get_window_extent(), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1


def test_log_axis_labels_decades_and_puts_minor_ticks_at_2_and_5_unless_under_2_decades(figures, tmp_path):
    plot_layerwise({"top 1": [700.0, 2e4, 2e4], "median": [0.6, 1.0, 14.0]}, tmp_path / "wide.png", "wide")
    plot_layerwise({"top 1": [3.0, 5.0, 8.0], "median": [2.0, 2.5, 3.0]}, tmp_path / "narrow.png", "narrow")
    wide, narrow = (fig.axes[0] for fig in figures)
    low, high = wide.get_ylim()
    minor = [t for t in wide.yaxis.get_minorticklocs() if low <= t <= high]
    mantissas = {round(t / 10 ** np.floor(np.log10(t)), 6) for t in minor}
    assert mantissas == {2.0, 5.0}  # 0.6 .. 2e4 spans 4.5 decades: 2 and 5 of each one
    wide.figure.canvas.draw()
    shown = [t.get_text() for t in wide.yaxis.get_ticklabels() if low <= t.get_position()[1] <= high]
    assert shown == ["10⁰", "10¹", "10²", "10³", "10⁴"]
    low, high = narrow.get_ylim()
    minor = [t for t in narrow.yaxis.get_minorticklocs() if low <= t <= high]
    assert {2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0} <= {round(t, 6) for t in minor}  # under a decade: every one


def _curves(title: str):
    fig = Figure(figsize=(7, 4), dpi=150)
    ax = fig.subplots()
    ax.plot(np.arange(30), np.logspace(0, 4, 30), marker="o", label="top 1")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    draws: list = []
    fig.canvas.mpl_connect("draw_event", draws.append)
    return fig, draws


def test_save_figure_draws_once_and_writes_what_tight_layout_and_savefig_write(tmp_path):
    plain, plain_draws = _curves("a title long enough to move the tight layout's margins")
    plain.tight_layout()
    plain.savefig(tmp_path / "plain.png")
    fig, draws = _curves("a title long enough to move the tight layout's margins")
    save_figure(fig, tmp_path / "saved.png")
    assert (tmp_path / "saved.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
    assert (len(plain_draws), len(draws)) == (2, 1)  # matplotlib's own path draws the figure twice


def test_sensitivity_blocks_are_integers(figures, tmp_path):
    result = SimpleNamespace(
        sensitivity={"scheme": "W8A8", "blocks": [{"block": b, "ratio": 1.0 + 0.1 * b} for b in range(8)]},
        calibration=SimpleNamespace(massive_blocks=[3, 4]),
    )
    QuantResult._sensitivity_plot(result, tmp_path / "s.png")
    (fig,) = figures
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) > 1 and all(float(t).is_integer() for t in ticks)


def test_perplexity_tick_labels_do_not_overlap(figures, tmp_path):
    ppl = {"W8": 36.92, "W8A8": 78.63, "W8A8-token": 37.81, "W4A4": 312.4}
    rows = [{"scheme": s, "strategy": "none", "perplexity": p} for s, p in ppl.items()]
    rows += [{"scheme": s, "strategy": "outlier-tokens", "perplexity": p * 0.8} for s, p in ppl.items()]
    result = SimpleNamespace(rows=rows, baseline={"perplexity": 36.78}, model="m")
    QuantResult._bar_chart(result, tmp_path / "p.png")
    (fig,) = figures
    fig.canvas.draw()
    axis = fig.axes[0].yaxis
    labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
    assert len(labels) >= 2
    boxes = [t.get_window_extent() for t in labels]
    assert not any(_boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@torch.no_grad()
def _amplify_later(loaded: LoadedModel, block: int, dim: int, into: int, gain: float, ids: torch.Tensor) -> None:
    """Make block `block`'s MLP read the massive `dim` (after the norm) and write `gain` times it into `into`."""
    outputs = []
    hook = loaded.model.model.layers[block - 1].register_forward_hook(
        lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o)
    )
    loaded.model(input_ids=ids)
    hook.remove()
    sign = float(torch.sign(outputs[0][0, 0, dim]))
    mlp, unit = loaded.model.model.layers[block].mlp, 7
    for linear in (mlp.gate_proj, mlp.up_proj):
        linear.weight[unit] = 0.0
        linear.weight[unit, dim] = 8.0 * sign
    mlp.down_proj.weight[:, unit] = 0.0
    mlp.down_proj.weight[into, unit] = gain


@pytest.mark.parametrize("family", FAMILIES)
def test_3d_view_shows_the_block_of_the_largest_massive_activation(family):
    ids = torch.randint(10, VOCAB, (1, 10), generator=torch.Generator().manual_seed(1))
    ids[0, 0] = MARK
    loaded = _loaded(family, [(0, 5, 1.0)])  # about 2,000 at block 0
    _amplify_later(loaded, block=2, dim=5, into=9, gain=50.0, ids=ids)  # a far larger site from block 2
    peaks = []  # independent: the largest |x| of each block output from plain hooks
    hooks = [
        block.register_forward_hook(
            lambda m, a, o: peaks.append(float((o[0] if isinstance(o, tuple) else o).abs().max()))
        )
        for block in loaded.model.model.layers
    ]
    with torch.no_grad():
        loaded.model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    result = run(loaded, ids, ScanConfig(keep_peak=True))
    assert result.summary["first_block"] == 0
    peak = int(np.argmax(peaks))
    assert peak >= 2 and peaks[peak] > 3 * peaks[0] and list(result.kept) == [peak]
