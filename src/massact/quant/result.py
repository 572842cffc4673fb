"""The result of `massact.quant.run`: JSON contract, terminal table, report.md and figures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator
from rich.console import Console
from rich.table import Table

from massact.format import fmt_ppl, md_code, md_escape, show_token
from massact.html.registry import result_kind
from massact.html.views.quant import quant_charts
from massact.outputs import write_json
from massact.precision import Precision
from massact.quant.calibrate import Calibration
from massact.quant.schemes import parse_scheme
from massact.report.figures import log_scale_or_note, save_figure
from massact.report.spread import fmt_spread, seeds_note
from massact.report.tables import print_table
from massact.tasks import TaskScores
from massact.tasks.scores import percent


@dataclass
class OnWindows:
    """What a result built on `QuantInputs` (quant, rewrite) records first: the model and its windows."""

    model: str
    corpus: str
    windows: list[int]  # [N, L] evaluated
    calibration_windows: list[int]  # [M, L] held out
    seed: int
    prefix_tokens: list[str]

    def window_fields(self) -> dict:
        """Those fields but the model, in their JSON order."""
        names = ("corpus", "windows", "calibration_windows", "seed", "prefix_tokens")
        return {name: getattr(self, name) for name in names}


KIND = "quant"  # the `kind` field of the JSON: which result this is

if TYPE_CHECKING:
    from massact.quant.config import QuantConfig

FORMAT = "massact-quant/1"
WEIGHTS_NOTE = "the schemes quantize these weights again, so results are relative to them"


def _change(ratio: float) -> str:
    return f"{ratio - 1:+.1%}" if math.isfinite(ratio) else "n/a"


@result_kind(KIND, "quant.json", view=lambda data, result=None: quant_charts(data))
@dataclass
class QuantResult(OnWindows):
    """Baseline and simulated-quantization perplexities, the chosen strategies and the per-block sensitivity."""

    config: QuantConfig
    schemes: list[dict]
    baseline: dict
    rows: list[dict]
    best: dict[str, dict]
    sensitivity: dict | None
    calibration: Calibration
    precision: Precision | None = None  # the unquantized pass: peak |x| per block, inf/NaN blocks
    weights: str | None = None  # how the loaded weights were stored, e.g. "Q4_1 GGUF, de-quantized to float32"
    spread: dict | None = None  # with several seeds: mean and spread of every number (`quant.seeds.summarize`)
    kept_token_share: float = 0.0  # share of the evaluated tokens outlier-tokens keeps in full precision
    unquantized: dict | None = None  # weights the simulator leaves in full precision (fused experts)
    execution: dict | None = None  # how the run executed: `LoadedModel.execution`
    rewrites: dict | None = None  # per rewrite, None when `massact rewrite` accepts it for the model, else why not

    def to_json(self) -> dict:
        calib = self.calibration
        return {
            "kind": KIND,
            "format": FORMAT,
            "model": self.model,
            **self.window_fields(),
            "thresholds": self.config.thresholds.to_json(),
            "alpha": self.config.alpha,
            "rotation_seed": self.config.seed,
            "schemes": self.schemes,
            "baseline": self.baseline,
            "rows": self.rows,
            "best": self.best,
            "sensitivity": self.sensitivity,
            "outlier_tokens": calib.outlier_tokens_json() | {"kept_token_share": self.kept_token_share},
            "massive_blocks": calib.massive_blocks,
            "super_weights": [w.to_json() for w in calib.super_weights],
            "act_scales": {
                "statistic": "max |x| per input channel over the calibration windows",
                "modules": len(calib.act_maxima),
                "max": {name: float(m.max()) if m.numel() else 0.0 for name, m in calib.act_maxima.items()},
            },
            "precision": self.precision.to_json() if self.precision else None,
            "seeds": self.spread,
            "dtype": self.precision.dtype if self.precision else None,
            "quantization": self.weights,
            "unquantized_weights": self.unquantized,
            "execution": self.execution,
        }

    def unquantized_line(self) -> str | None:
        """What the schemes leave in full precision, when anything: fused expert weights."""
        if not self.unquantized:
            return None
        count = len(self.unquantized["parameters"])
        return (
            f"not quantized: {count} fused expert weight tensors ({self.unquantized['share']:.0%} of the blocks' "
            "weight entries, and their inputs); the simulator quantizes Linear modules only, so every scheme "
            "here understates what quantizing this model costs"
        )

    def table(self) -> Table:
        table = Table(title=f"{self.model}: perplexity on {self.windows[0]} x {self.windows[1]} {self.corpus} windows")
        table.add_column("scheme", no_wrap=True)
        table.add_column("activation scales", overflow="fold")
        table.add_column("strategy", overflow="fold")
        tasks = "tasks" in self.baseline
        for name in ("perplexity", "vs fp", *self._spread_columns(), *(["mean acc %"] if tasks else [])):
            table.add_column(name, justify="right", no_wrap=True)  # print_table makes room: never cut
        base = self._spread_cells(None)
        table.add_row("unquantized", "", "", fmt_ppl(self.baseline["perplexity"]), "", *base, *self._acc(self.baseline))
        for index, row in enumerate(self.rows):
            strategy = row["strategy"] + (f" = {row['chosen']}" if "chosen" in row else "")
            cells = (fmt_ppl(row["perplexity"]), _change(row["ratio"]), *self._spread_cells(index), *self._acc(row))
            table.add_row(row["scheme"], _scales(row["scheme"]), strategy, *cells)
        return table

    def _spread_columns(self) -> list[str]:
        """With several seeds: the columns of mean ± sd over them."""
        if not self.spread:
            return []
        n = len(self.spread["seeds"])
        return [f"mean ± sd, {n} seeds", "vs fp, mean ± sd"]

    def _spread_cells(self, index: int | None) -> list[str]:
        """The mean ± sd cells of row `index` (None: the unquantized baseline)."""
        if not self.spread:
            return []
        if index is None:
            return [fmt_spread(self.spread["baseline"], fmt_ppl), ""]
        row = self.spread["rows"][index]
        change = fmt_spread(row["ratio"], lambda v: f"{v:.1%}")
        if change != "n/a":  # the mean as a change: +12.3% ± 1.0%
            change = f"{row['ratio']['mean'] - 1:+.1%} ± {row['ratio']['std']:.1%}"
        return [fmt_spread(row["perplexity"], fmt_ppl), change]

    def _acc(self, row: dict) -> list[str]:
        """The mean zero-shot accuracy cell of a row (no cell without --tasks)."""
        if "tasks" not in self.baseline:
            return []
        return [percent(TaskScores.from_json(row["tasks"]).mean_acc)]

    def show(self, console: Console) -> None:
        print_table(console, self.table())
        if self.weights:
            console.print(f"weights: {self.weights}; {WEIGHTS_NOTE}", highlight=False, markup=False, soft_wrap=True)
        if line := self.unquantized_line():
            console.print(line, style="yellow", highlight=False, markup=False, soft_wrap=True)
        if self.precision is not None:
            self.precision.show(console)
        calib = self.calibration
        console.print(f"outlier tokens kept by outlier-tokens: {self._outlier_line()}", highlight=False)
        if calib.super_weights:
            names = ", ".join(f"{w.module}{list(w.index)}" for w in calib.super_weights)
            console.print(f"super weights: {names}", highlight=False)
        if self.sensitivity is not None:
            worst = sorted(self.sensitivity["blocks"], key=lambda r: -_finite(r["ratio"]))[:3]
            blocks = ", ".join(f"{r['block']} ({_change(r['ratio'])})" for r in worst)
            console.print(
                f"most sensitive blocks under {_described(self.sensitivity['scheme'])} alone: {blocks}; "
                f"massive activations in blocks {_span(self.calibration.massive_blocks)}",
                highlight=False,
            )
        if line := self.not_tried_line():
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        console.print(self.rewrite_line(), highlight=False, markup=False, soft_wrap=True)

    def not_tried_line(self) -> str | None:
        """The candidates `best` left out and why (rotations on a model the rewrite does not rotate); None if none."""
        skipped = {name: why for choice in self.best.values() for name, why in choice.get("not_tried", {}).items()}
        if not skipped:
            return None
        return f"best did not try {', '.join(skipped)}: {'; '.join(dict.fromkeys(skipped.values()))}"

    def rewrite_line(self) -> str:
        """The `massact rewrite` that folds the winning rotation or smoothing into the weights (`quant.advice`)."""
        from massact.quant.advice import rewrite_advice

        return rewrite_advice(self)

    def _outlier_line(self) -> str:
        calib = self.calibration
        parts = []
        if calib.first_positions:
            parts.append(f"the first position ({calib.first_rate:.0%} of calibration windows)")
        if calib.token_ids:
            parts.append("tokens " + ", ".join(show_token(t) for t in calib.token_texts))
        line = "; ".join(parts) or "none found"
        line += f"; {self.kept_token_share:.1%} of the evaluated tokens kept in full precision"
        if calib.features:
            shown = ", ".join(f"dim {d} on {share:.0%} of tokens" for d, share in calib.features.items())
            line += f"; outlier features, which mark no token, left out: {shown}"
        return line

    def markdown(self) -> str:
        lines = [
            f"# Simulated quantization of {md_escape(self.model)}",
            "",
            f"Perplexity on {self.windows[0]} windows of {self.windows[1]} tokens of {md_code(self.corpus)} "
            f"(seed {self.seed}); strategies learned on {self.calibration_windows[0]} held-out windows. "
            f"Window prefix: {', '.join(md_code(t) for t in self.prefix_tokens) or 'none'}."
            + (f" Weights: {md_escape(self.weights)}; {WEIGHTS_NOTE}." if self.weights else ""),
            "",
            "| scheme | activation scales | strategy | perplexity | vs fp |"
            + "".join(f" {c} |" for c in self._spread_columns())
            + (" mean acc % |" if "tasks" in self.baseline else ""),
            "|---|---|---|---:|---:|"
            + "---:|" * len(self._spread_columns())
            + ("---:|" if "tasks" in self.baseline else ""),
            f"| unquantized | | | {fmt_ppl(self.baseline['perplexity'])} | |"
            + "".join(f" {a} |" for a in [*self._spread_cells(None), *self._acc(self.baseline)]),
        ]
        for index, row in enumerate(self.rows):
            strategy = row["strategy"] + (f" = {row['chosen']}" if "chosen" in row else "")
            scheme = f"{row['scheme']} | {_scales(row['scheme']) or '-'}"
            cells = f"{scheme} | {md_escape(strategy)} | {fmt_ppl(row['perplexity'])} | {_change(row['ratio'])}"
            extra = [*self._spread_cells(index), *self._acc(row)]
            lines.append(f"| {cells} |" + "".join(f" {a} |" for a in extra))
        if self.spread:
            what = "the same measurement (calibration included)"
            lines += ["", seeds_note(self.spread["seeds"], "Perplexity and vs fp", what)]
        lines += ["", *(self.precision.markdown() if self.precision else [])]
        if line := self.unquantized_line():
            lines += [f"**{md_escape(line[:1].upper() + line[1:])}.**", ""]
        lines += [f"Outlier tokens: {md_escape(self._outlier_line())}.", "", "![perplexity](perplexity.png)", ""]
        if line := self.not_tried_line():
            lines += [md_escape(line), ""]
        lines += [self.rewrite_line(), ""]
        if self.sensitivity is not None:
            s = self.sensitivity
            lines += [
                f"## Per-block sensitivity ({_described(s['scheme'])}, one block quantized at a time, "
                f"{s['windows'][0]} windows)",
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
        fig = Figure(figsize=(max(6, 1.4 * len(schemes) + 2), 4))
        ax = fig.subplots()
        for k, strategy in enumerate(strategies):
            xs, ys = [], []
            for i, scheme in enumerate(schemes):
                for row in self.rows:
                    if row["scheme"] == scheme and row["strategy"] == strategy and math.isfinite(row["perplexity"]):
                        xs.append(i + (k - (len(strategies) - 1) / 2) * width)
                        ys.append(row["perplexity"])
            ax.bar(xs, ys, width=width, label=strategy)
        if math.isfinite(self.baseline["perplexity"]):
            ax.axhline(self.baseline["perplexity"], color="black", linestyle="--", linewidth=1, label="unquantized")
        ax.set_xticks(range(len(schemes)), schemes)
        finite = [r["perplexity"] for r in self.rows] + [self.baseline["perplexity"]]
        if log_scale_or_note(ax, finite):
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))  # no overlap
            ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel("perplexity (log)")
        ax.set_title(f"{self.model}: perplexity per scheme and strategy")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        save_figure(fig, path, dpi=120)

    def _sensitivity_plot(self, path: Path) -> None:
        s = self.sensitivity
        blocks = [r["block"] for r in s["blocks"]]
        ratios = [r["ratio"] if math.isfinite(r["ratio"]) else float("nan") for r in s["blocks"]]
        massive = set(self.calibration.massive_blocks)
        colors = ["tab:red" if b in massive else "tab:blue" for b in blocks]
        fig = Figure(figsize=(max(6, 0.25 * len(blocks) + 2), 3.5))
        ax = fig.subplots()
        ax.bar(blocks, [100 * (r - 1) for r in ratios], color=colors)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not any(math.isfinite(r) for r in ratios):
            log_scale_or_note(ax, [])  # nothing finite: say so on the plot
        ax.set_xlabel("block (red: its output carries massive activations)")
        ax.set_ylabel("perplexity change (%)")
        ax.set_title(f"{s['scheme']} in one block at a time")
        save_figure(fig, path, dpi=120)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _scales(scheme: str) -> str:
    """How a scheme scales activations, in words ("dynamic per-tensor"); "" when it does not quantize them."""
    return parse_scheme(scheme).act_label


def _described(scheme: str) -> str:
    """`W8A8 (dynamic per-tensor)`: the name with its activation scales in words."""
    return parse_scheme(scheme).described


def _span(blocks: list[int]) -> str:
    if not blocks:
        return "none"
    return f"{blocks[0]}..{blocks[-1]}" if len(blocks) > 1 else str(blocks[0])
