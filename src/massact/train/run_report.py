"""One training run's views: the verdict line, report.md and figures (loss, and top-1 |x| per block over steps)."""

from __future__ import annotations

from pathlib import Path

from massact.detect import Thresholds
from massact.format import fmt_number
from massact.report.figures import plot_curves
from massact.train.measures import site

BLOCK_COLUMNS = (
    ("top1", "top-1 \\|x\\|", 1),
    ("ratio", "top-1 / median", 0),
    ("top1_on_bos", "top entry on BOS", 2),
    ("top1_dim", "its dim", 0),
    ("dim_constancy", "same dim", 2),
    ("sink_rate", "sink rate", 2),
    ("residual_peak", "residual peak", 1),
    ("value_drain", "value drain", 2),
    ("kurtosis", "kurtosis", 1),
)


def run_verdict(blocks: list[dict], thresholds: Thresholds | None = None) -> str:
    """One sentence: the final model's site (`measures.site`: the block whose top entry is largest against its
    median, the block the summary and the experiment describe), and whether anything passes the paper's criterion."""
    thresholds = thresholds or Thresholds()
    top = site(blocks)
    where = (
        f"largest entry against its median in block {top['block']}: |x| {fmt_number(top['top1'], 1)}, "
        f"{fmt_number(top['ratio'], 0)}x the median, dim {top['top1_dim']} in {top['dim_constancy']:.0%} of the "
        f"probe sequences, on BOS in {top['top1_on_bos']:.0%}"
    )
    massive = any(b.get("num_massive", 0) > 0 for b in blocks)
    crit = f"|x| > {thresholds.abs:g} and >= {thresholds.ratio:g}x the median"
    return f"{where}: {'a' if massive else 'no'} massive activation by the paper's criterion ({crit})"


def run_markdown(data: dict) -> str:
    """report.md of one run's summary.json."""
    config, model = data["config"], data["config"]["model"]
    lines = [
        f"# {model['arch']} {model['attention']} on {config['task']}",
        "",
        f"Model: {model['arch']}, {model['n_layer']} blocks, hidden {model['n_embd']}, {model['n_head']} heads, "
        f"context {model['block_size']}, vocabulary {model['vocab_size']}, {data['parameters']:,} parameters. "
        f"{data['step']} steps of batch {config['batch_size']}, {config['optimizer']} at learning rate "
        f"{config['learning_rate']:g} ({config['schedule']} after {config['warmup_steps']} warm-up steps), weight "
        f"decay {config['weight_decay']:g}{' (norm gains too)' if config['decay_norm_gains'] else ''}; "
        f"{data['train_seconds']:.0f} s. Final validation loss {fmt_number(data['final_val_loss'], 4)}.",
        "",
    ]
    if data.get("diverged_at") is not None:
        lines += [
            f"**Diverged**: the training loss was not finite at step {data['diverged_at']}; training stopped.",
            "",
        ]
    blocks = data["final_blocks"]
    if blocks:
        lines += [run_verdict(blocks) + ".", "", "## Final model, per block", ""]
        lines.append("| block | " + " | ".join(title for _, title, _ in BLOCK_COLUMNS) + " |")
        lines.append("|---|" + "---|" * len(BLOCK_COLUMNS))
        for block in blocks:
            cells = [fmt_number(block[name], digits) for name, _, digits in BLOCK_COLUMNS]
            lines.append(f"| {block['block']} | " + " | ".join(cells) + " |")
        lines += ["", "![validation loss](figures/loss.png)", "", "![top-1 |x| per block](figures/top1.png)", ""]
    return "\n".join(lines)


def plot_run(data: dict, monitor_rows: list[dict], val_log: list[dict], figures: Path) -> None:
    """figures/loss.png (validation loss) and figures/top1.png (each block's top-1 |x| over steps)."""
    if val_log:
        loss = {"validation": ([e["step"] for e in val_log], [e["val_loss"] for e in val_log])}
        plot_curves(loss, figures / "loss.png", "validation loss", "step", "loss", log=False)
    blocks = sorted({r["block"] for r in monitor_rows})
    curves = {}
    for block in blocks:
        rows = sorted((r for r in monitor_rows if r["block"] == block), key=lambda r: r["step"])
        curves[f"block {block}"] = ([r["step"] for r in rows], [r["top1"] for r in rows])
    if curves:
        plot_curves(curves, figures / "top1.png", "largest |x| of each block's output", "step", "top-1 |x|")
