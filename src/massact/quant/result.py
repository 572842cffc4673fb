"""The result of `massact.quant.run`: JSON contract, terminal table, report.md and figures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from massact.format import fmt_ppl, md_code, md_escape, show_token  # noqa: E402
from massact.outputs import write_json  # noqa: E402
from massact.quant.calibrate import Calibration  # noqa: E402
from massact.report.tables import print_table  # noqa: E402
from massact.tasks import TaskScores
from massact.tasks.scores import percent

if TYPE_CHECKING:
    from massact.quant.run import QuantConfig

FORMAT = "massact-quant/1"


def _change(ratio: float) -> str:
    return f"{ratio - 1:+.1%}" if math.isfinite(ratio) else "n/a"


@dataclass
class QuantResult:
    """Baseline and simulated-quantization perplexities, the chosen strategies and the per-block sensitivity."""

    model: str
    corpus: str
    windows: list[int]
    calibration_windows: list[int]
    seed: int
    prefix_tokens: list[str]
    config: QuantConfig
    schemes: list[dict]
    baseline: dict
    rows: list[dict]
    best: dict[str, dict]
    sensitivity: dict | None
    calibration: Calibration

    def to_json(self) -> dict:
        calib = self.calibration
        return {
            "format": FORMAT,
            "model": self.model,
            "corpus": self.corpus,
            "windows": self.windows,
            "calibration_windows": self.calibration_windows,
            "seed": self.seed,
            "prefix_tokens": self.prefix_tokens,
            "thresholds": self.config.thresholds.to_json(),
            "alpha": self.config.alpha,
            "rotation_seed": self.config.seed,
            "schemes": self.schemes,
            "baseline": self.baseline,
            "rows": self.rows,
            "best": self.best,
            "sensitivity": self.sensitivity,
            "outlier_tokens": calib.outlier_tokens_json(),
            "massive_blocks": calib.massive_blocks,
            "super_weights": [w.to_json() for w in calib.super_weights],
            "act_scales": {
                "statistic": "max |x| per input channel over the calibration windows",
                "modules": len(calib.act_maxima),
                "max": {name: float(m.max()) if m.numel() else 0.0 for name, m in calib.act_maxima.items()},
            },
        }

    def table(self) -> Table:
        table = Table(title=f"{self.model}: perplexity on {self.windows[0]} x {self.windows[1]} {self.corpus} windows")
        table.add_column("scheme", no_wrap=True)
        table.add_column("strategy", overflow="fold")
        tasks = "tasks" in self.baseline
        for name in ("perplexity", "vs fp", *(["mean acc %"] if tasks else [])):
            table.add_column(name, justify="right", no_wrap=True)  # print_table makes room: never cut
        table.add_row("unquantized", "", fmt_ppl(self.baseline["perplexity"]), "", *self._acc(self.baseline))
        for row in self.rows:
            strategy = row["strategy"] + (f" = {row['chosen']}" if "chosen" in row else "")
            table.add_row(row["scheme"], strategy, fmt_ppl(row["perplexity"]), _change(row["ratio"]), *self._acc(row))
        return table

    def _acc(self, row: dict) -> list[str]:
        """The mean zero-shot accuracy cell of a row (no cell without --tasks)."""
        if "tasks" not in self.baseline:
            return []
        return [percent(TaskScores.from_json(row["tasks"]).mean_acc)]

    def show(self, console: Console) -> None:
        print_table(console, self.table())
        calib = self.calibration
        console.print(f"outlier tokens kept by outlier-tokens: {self._outlier_line()}", highlight=False)
        if calib.super_weights:
            names = ", ".join(f"{w.module}{list(w.index)}" for w in calib.super_weights)
            console.print(f"super weights: {names}", highlight=False)
        if self.sensitivity is not None:
            worst = sorted(self.sensitivity["blocks"], key=lambda r: -_finite(r["ratio"]))[:3]
            blocks = ", ".join(f"{r['block']} ({_change(r['ratio'])})" for r in worst)
            console.print(
                f"most sensitive blocks under {self.sensitivity['scheme']} alone: {blocks}; "
                f"massive activations in blocks {_span(self.calibration.massive_blocks)}",
                highlight=False,
            )
        console.print(self.rewrite_line(), highlight=False, markup=False, soft_wrap=True)

    def rewrite_line(self) -> str:
        """The `massact rewrite` that folds the chosen rotation or smoothing into the weights."""
        from massact.rewrite.suggest import for_strategies, line

        suggested = for_strategies(self.model, [b["chosen"] for b in self.best.values()], self.config.alpha)
        return line([suggested] if suggested else [], "the best strategies fold no rotation or smoothing")

    def _outlier_line(self) -> str:
        calib = self.calibration
        parts = []
        if calib.first_positions:
            parts.append(f"the first position ({calib.first_rate:.0%} of calibration windows)")
        if calib.token_ids:
            parts.append("tokens " + ", ".join(show_token(t) for t in calib.token_texts))
        return "; ".join(parts) or "none found"

    def markdown(self) -> str:
        lines = [
            f"# Simulated quantization of {md_escape(self.model)}",
            "",
            f"Perplexity on {self.windows[0]} windows of {self.windows[1]} tokens of {md_code(self.corpus)} "
            f"(seed {self.seed}); strategies learned on {self.calibration_windows[0]} held-out windows. "
            f"Window prefix: {', '.join(md_code(t) for t in self.prefix_tokens) or 'none'}.",
            "",
            "| scheme | strategy | perplexity | vs fp |" + (" mean acc % |" if "tasks" in self.baseline else ""),
            "|---|---|---:|---:|" + ("---:|" if "tasks" in self.baseline else ""),
            f"| unquantized | | {fmt_ppl(self.baseline['perplexity'])} | |"
            + "".join(f" {a} |" for a in self._acc(self.baseline)),
        ]
        for row in self.rows:
            strategy = row["strategy"] + (f" = {row['chosen']}" if "chosen" in row else "")
            cells = f"{row['scheme']} | {md_escape(strategy)} | {fmt_ppl(row['perplexity'])} | {_change(row['ratio'])}"
            lines.append(f"| {cells} |" + "".join(f" {a} |" for a in self._acc(row)))
        lines += ["", f"Outlier tokens: {md_escape(self._outlier_line())}.", "", "![perplexity](perplexity.png)", ""]
        lines += [self.rewrite_line(), ""]
        if self.sensitivity is not None:
            s = self.sensitivity
            lines += [
                f"## Per-block sensitivity ({s['scheme']}, one block quantized at a time, {s['windows'][0]} windows)",
                "",
                f"Massive activations in blocks {_span(self.calibration.massive_blocks)}.",
                "",
                "![sensitivity](sensitivity.png)",
                "",
                "| block | perplexity | vs fp |",
                "|---:|---:|---:|",
            ]
            lines += [f"| {r['block']} | {fmt_ppl(r['perplexity'])} | {_change(r['ratio'])} |" for r in s["blocks"]]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> None:
        out = Path(out)
        write_json(out / "quant.json", self.to_json())
        (out / "report.md").write_text(self.markdown(), encoding="utf-8")
        self._bar_chart(out / "perplexity.png")
        if self.sensitivity is not None:
            self._sensitivity_plot(out / "sensitivity.png")

    def _bar_chart(self, path: Path) -> None:
        schemes = list(dict.fromkeys(r["scheme"] for r in self.rows))
        strategies = list(dict.fromkeys(r["strategy"] for r in self.rows))
        width = 0.8 / max(len(strategies), 1)
        fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(schemes) + 2), 4))
        for k, strategy in enumerate(strategies):
            xs, ys = [], []
            for i, scheme in enumerate(schemes):
                for row in self.rows:
                    if row["scheme"] == scheme and row["strategy"] == strategy and math.isfinite(row["perplexity"]):
                        xs.append(i + (k - (len(strategies) - 1) / 2) * width)
                        ys.append(row["perplexity"])
            ax.bar(xs, ys, width=width, label=strategy)
        ax.axhline(self.baseline["perplexity"], color="black", linestyle="--", linewidth=1, label="unquantized")
        ax.set_xticks(range(len(schemes)), schemes)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel("perplexity (log)")
        ax.set_title(f"{self.model}: perplexity per scheme and strategy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def _sensitivity_plot(self, path: Path) -> None:
        s = self.sensitivity
        blocks = [r["block"] for r in s["blocks"]]
        ratios = [r["ratio"] if math.isfinite(r["ratio"]) else float("nan") for r in s["blocks"]]
        massive = set(self.calibration.massive_blocks)
        colors = ["tab:red" if b in massive else "tab:blue" for b in blocks]
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(blocks) + 2), 3.5))
        ax.bar(blocks, [100 * (r - 1) for r in ratios], color=colors)
        ax.set_xlabel("block (red: its output carries massive activations)")
        ax.set_ylabel("perplexity change (%)")
        ax.set_title(f"{s['scheme']} in one block at a time")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _span(blocks: list[int]) -> str:
    if not blocks:
        return "none"
    return f"{blocks[0]}..{blocks[-1]}" if len(blocks) > 1 else str(blocks[0])
