"""The attention-bias experiment's result and its views: results.json, report.md and four figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from massact.outputs import write_json
from massact.report.figures import plot_curves
from massact.train.presets import TrainConfig
from massact.train.trainer import TrainResult

COLORS = {"default": "C3", "sink": "C1", "bias": "C2"}


@dataclass
class ExperimentResult:
    """Every variant's config and training result, trained with the same data, seed and steps."""

    preset: str
    corpus: str
    configs: dict[str, TrainConfig]
    results: dict[str, TrainResult]

    def to_json(self) -> dict:
        """What results.json holds: preset, corpus, every variant's config and summary."""
        configs = {v: c.to_dict() for v, c in self.configs.items()}
        summary = {v: summarize_variant(r) for v, r in self.results.items()}
        return {"preset": self.preset, "corpus": self.corpus, "configs": configs, "variants": summary}

    def show(self, console: Console) -> None:
        for variant, run in self.results.items():
            console.print(f"{variant}: validation loss {run.final_val_loss:.4f}", markup=False)

    def write(self, out: Path) -> None:
        """results.json, report.md and figures/ into `out`."""
        write_experiment_report(self, out)


def final_blocks(rows: list[dict]) -> list[dict]:
    """The monitor rows of the last recorded step, by block."""
    last = max(r["step"] for r in rows)
    return sorted((r for r in rows if r["step"] == last), key=lambda r: r["block"])


def summarize_variant(result) -> dict:
    blocks = final_blocks(result.monitor_rows)
    peak = max(blocks, key=lambda r: r["top1"])
    return {
        "final_val_loss": result.final_val_loss,
        "steps": result.step,
        "train_seconds": result.train_seconds,
        "peak": peak,
        "max_ratio": max(r["ratio"] for r in blocks),
        "num_massive": sum(r["num_massive"] for r in blocks),
        "blocks": blocks,
        "val_log": result.val_log,
        "emergence": result.emergence,
    }


def write_experiment_report(experiment: ExperimentResult, out: Path) -> None:
    """Write results.json, report.md and figures/ for `experiment` into `out`."""
    summary = {v: summarize_variant(r) for v, r in experiment.results.items()}
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_curves(
        {v: ([e["step"] for e in s["val_log"]], [e["val_loss"] for e in s["val_log"]]) for v, s in summary.items()},
        figures / "val_loss.png",
        "validation loss",
        "step",
        "loss",
        log=False,
        colors=COLORS,
    )
    plot_curves(
        {v: ([b["block"] for b in s["blocks"]], [b["top1"] for b in s["blocks"]]) for v, s in summary.items()},
        figures / "top1_per_block.png",
        "largest |activation| per block (end of training)",
        "block",
        "top-1",
        colors=COLORS,
    )
    plot_curves(
        {v: ([b["block"] for b in s["blocks"]], [b["ratio"] for b in s["blocks"]]) for v, s in summary.items()},
        figures / "ratio_per_block.png",
        "top-1 / median per block (end of training)",
        "block",
        "ratio",
        colors=COLORS,
    )
    plot_curves(
        {v: ([e["step"] for e in s["emergence"]], [e["top1"] for e in s["emergence"]]) for v, s in summary.items()},
        figures / "emergence.png",
        "largest |activation| over all blocks during training",
        "step",
        "top-1",
        colors=COLORS,
    )
    write_json(out / "results.json", experiment.to_json())
    (out / "report.md").write_text(_markdown(experiment, summary), encoding="utf-8")


def _markdown(experiment: ExperimentResult, summary: dict) -> str:
    any_config = next(iter(experiment.configs.values()))
    thresholds = "|x| > 100 and |x| >= 1000 x median"
    lines = [
        f"# Attention bias experiment ({experiment.preset}, corpus {experiment.corpus})",
        "",
        f"Model: {any_config.model.n_layer} blocks, hidden {any_config.model.n_embd}, {any_config.model.n_head} heads, "
        f"context {any_config.model.block_size}; {any_config.max_steps} steps of "
        f"{any_config.tokens_per_step:,} tokens; seed {any_config.seed} for every variant.",
        f"Probe batch: {any_config.probe_sequences} fixed validation windows. Massive = {thresholds}.",
        "",
        "| variant | final val loss | top-1 magnitude (block, token, dim) | median there | top-1 / median "
        "| massive entries |",
        "|---|---|---|---|---|---|",
    ]
    for variant, s in summary.items():
        p = s["peak"]
        lines.append(
            f"| {variant} | {s['final_val_loss']:.4f} | {p['top1']:.2f} ({p['block']}, {p['top_token']}, "
            f"{p['top_dim']}) | {p['median']:.4f} | {p['ratio']:.1f} | {s['num_massive']} |"
        )
    lines.append("")
    for variant, s in summary.items():
        found = "yes" if s["num_massive"] else "no"
        lines.append(
            f"- {variant}: massive activations at the end of training: {found}; largest top-1 / median "
            f"{s['max_ratio']:.1f}; {s['steps']} steps in {s['train_seconds']:.0f} s of training"
        )
    lines += ["", "## Per block at the end of training (top-1 magnitude / ratio to median)", ""]
    variants = list(summary)
    lines.append("| block | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---|" * len(variants))
    for index in range(len(summary[variants[0]]["blocks"])):
        cells = [
            f"{summary[v]['blocks'][index]['top1']:.2f} / {summary[v]['blocks'][index]['ratio']:.1f}" for v in variants
        ]
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    lines += ["", "## Emergence: largest magnitude over blocks (its block) by step", ""]
    lines.append("| step | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---|" * len(variants))
    steps = [e["step"] for e in summary[variants[0]]["emergence"]]
    for i, step in enumerate(steps):
        cells = []
        for v in variants:
            em = summary[v]["emergence"]
            cells.append(f"{em[i]['top1']:.2f} ({em[i]['block']})" if i < len(em) else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![validation loss](figures/val_loss.png)",
        "![top-1 per block](figures/top1_per_block.png)",
        "![ratio per block](figures/ratio_per_block.png)",
        "![emergence](figures/emergence.png)",
        "",
    ]
    return "\n".join(lines)
