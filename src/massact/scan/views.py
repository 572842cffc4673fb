"""The terminal table, the Markdown report and the files of a scan."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from massact.capture.stats import BlockRecord
from massact.detect import Thresholds
from massact.format import fmt_activation as fmt
from massact.format import md_code, md_escape, show_token
from massact.models.structure import Structure
from massact.outputs import write_json
from massact.precision import Precision
from massact.report.markdown import plural
from massact.report.tables import numeric_column, print_table


class ScanView(Protocol):
    """What the views read of a scan's result (a protocol, so that the views import no result)."""

    model: str
    structure: Structure
    hidden_size: int
    tokens: list[str]
    thresholds: Thresholds
    records: list[BlockRecord]
    massive: list  # MassiveActivation entries: .block, .token, .dim, .value, ...
    summary: dict
    kept: dict[int, torch.Tensor]
    prompt: str | None
    dtype: str
    source: str | None
    quantization: str | None

    @property
    def num_blocks(self) -> int: ...

    @property
    def precision(self) -> Precision: ...

    def top_magnitudes(self, rank: int) -> list[float]: ...

    def medians(self) -> list[float]: ...

    def to_json(self) -> dict: ...


LAYERWISE_PNG = "layerwise.png"
ACTIVATIONS_PNG = "activations_3d.png"


def model_line(result: ScanView) -> str:
    """The model's name, with the file it came from and how it was quantized when known."""
    extra = [part for part in (result.source, result.quantization) if part and part != result.model]
    return result.model + (f" ({'; '.join(extra)})" if extra else "")


def show_scan(result: ScanView, console: Console) -> None:
    """A table of every block: top activation, where it sits, the median and the ratio."""
    table = Table(title=f"massact scan: {escape(model_line(result))}", title_justify="left")
    for column in ("block", "top |x|", "value", "token", "dim", "median", "ratio", "massive"):
        if column == "token":
            table.add_column(column, justify="left")
        else:
            numeric_column(table, column)
    flagged = {m.block for m in result.massive}
    for index, record in enumerate(result.records):
        style = "bold red" if index in flagged or record.nonfinite else None
        massive = str(int(record.massive_values.numel())) + ("!" if record.nonfinite else "")
        if record.all_nonfinite:
            label = f"all {record.nonfinite_kind}"
            table.add_row(str(index), label, label, "-", "-", "-", "-", massive, style=style)
            continue
        value = float(record.top_values[0])
        token = int(record.top_tokens[0])
        ratio = abs(value) / record.median if record.median > 0 else math.inf
        table.add_row(
            str(index),
            fmt(abs(value)),
            fmt(value),
            escape(f"{token} {show_token(result.tokens[token])}"),
            str(int(record.top_dims[0])),
            fmt(record.median),
            fmt(ratio),
            massive,
            style=style,
        )
    print_table(console, table)
    summary = result.summary
    if summary["first_block"] is None:
        console.print(
            f"No massive activations (|x| > {result.thresholds.abs:g} and >= {result.thresholds.ratio:g} x median)."
        )
    else:
        tokens = ", ".join(f"{t['token']} {show_token(t['token_text'])} ({t['token_kind']})" for t in summary["tokens"])
        console.print(
            f"Massive activations in blocks {summary['first_block']}..{summary['last_block']}"
            f"{' (then inf/NaN)' if 'overflowed' in _until(result, summary['last_block']) else ''}, "
            f"{plural(len(summary['dims']), 'dim')} {', '.join(map(str, summary['dims']))}, "
            f"{plural(len(summary['tokens']), 'token')} {tokens}",
            markup=False,
        )
    for line in feature_lines(result):
        console.print(line, markup=False, highlight=False)
    result.precision.show(console)


def _until(result: ScanView, last: int) -> str:
    """How the massive activations end: at a block, or where the block after it overflowed to inf/NaN."""
    following = last + 1
    if following < len(result.records) and result.records[following].nonfinite:
        return f"are seen until block {last} only because block {following}'s output overflowed to inf/NaN"
    return f"last until block {last}"


def feature_lines(result: ScanView) -> list[str]:
    """One sentence per outlier feature: a dim that passes the criterion on most tokens, not a massive activation."""
    share = result.thresholds.feature_share
    return [
        f"Outlier feature (not a massive activation): dim {f['dim']} passes the criterion on "
        f"{f['num_tokens']} of {len(result.tokens)} tokens ({f['token_share']:.0%}, more than {share:.0%}), "
        f"blocks {f['first_block']}..{f['last_block']}, peak {fmt(f['peak_value'])} at block {f['peak_block']}."
        for f in result.summary["features"]
    ]


def markdown_report(result: ScanView, figures: dict[str, str]) -> str:
    """A short report a person reads, figures embedded by relative path."""
    s = result.summary
    lines = [
        f"# massact scan: {md_escape(result.model)}",
        "",
    ]
    if result.source and result.source != result.model:
        lines.append(f"- model file: {md_code(result.source, table=False)}")
    if result.quantization:
        lines.append(f"- weights: {md_escape(result.quantization)}")
    lines += [
        f"- blocks: {result.num_blocks} ({md_code(result.structure.blocks_path, table=False)}), "
        f"hidden size {result.hidden_size}, dtype {result.dtype}",
        f"- prompt: {md_code(result.prompt or '', table=False)} ({len(result.tokens)} tokens)",
        f"- criterion: \\|x\\| > {result.thresholds.abs:g} and \\|x\\| >= {result.thresholds.ratio:g} x block median",
        "",
    ]
    if s["first_block"] is None:
        lines.append("**No massive activations found**" + (" (only outlier features)." if s["features"] else "."))
    else:
        lines += [
            f"**Massive activations** appear at block {s['first_block']} and {_until(result, s['last_block'])}, "
            f"in {plural(len(s['dims']), 'dim')} {', '.join(map(str, s['dims']))}.",
            "",
            "| token | text | kind | dim | blocks | peak value | peak block | ratio to median |",
            "|---:|---|---|---:|---|---:|---:|---:|",
        ]
        for site in s["sites"]:
            lines.append(
                f"| {site['token']} | {md_code(site['token_text'])} | {site['token_kind']} | {site['dim']} | "
                f"{site['first_block']}-{site['last_block']} | {site['peak_value']:,.1f} | {site['peak_block']} | "
                f"{site['peak_ratio']:,.0f} |"
            )
    if s["features"]:
        lines += [
            "",
            f"**Outlier features**: dims that pass the criterion on more than {result.thresholds.feature_share:.0%} "
            "of the tokens in some block (LLM.int8's kind), left out of the massive activations above.",
            "",
            "| dim | tokens (share) | blocks | peak value | peak block |",
            "|---:|---|---|---:|---:|",
        ]
        for f in s["features"]:
            lines.append(
                f"| {f['dim']} | {f['num_tokens']} of {len(result.tokens)} ({f['token_share']:.0%}) | "
                f"{f['first_block']}-{f['last_block']} | {f['peak_value']:,.1f} | {f['peak_block']} |"
            )
    lines += [
        "",
        "## Per block",
        "",
        "| block | top 1 | top 2 | top 3 | median | top-1 / median |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    top1, top2, top3 = (result.top_magnitudes(r) for r in (1, 2, 3))
    med = result.medians()
    for i, record in enumerate(result.records):
        if record.all_nonfinite:
            label = f"all {record.nonfinite_kind}"
            lines.append(f"| {i} | {label} | {label} | {label} | - | - |")
            continue
        ratio = f"{top1[i] / med[i]:,.0f}" if med[i] > 0 else "inf"
        lines.append(f"| {i} | {fmt(top1[i])} | {fmt(top2[i])} | {fmt(top3[i])} | {fmt(med[i])} | {ratio} |")
    if result.precision.warning:
        lines += ["", *result.precision.markdown()[:-1]]
    for caption, name in figures.items():
        lines += ["", f"![{caption}]({name})"]
    return "\n".join(lines) + "\n"


def write_scan(result: ScanView, directory: Path) -> None:
    """scan.json, the two figures and report.md into `directory`."""
    from massact.report.figures import plot_activations_3d, plot_layerwise

    write_json(directory / "scan.json", result.to_json())
    figures = {}
    plot_layerwise(
        {
            "top 1": result.top_magnitudes(1),
            "top 2": result.top_magnitudes(2),
            "top 3": result.top_magnitudes(3),
            "median": result.medians(),
        },
        directory / LAYERWISE_PNG,
        title=f"{result.model}: largest activations per block",
    )
    figures["Top-1/2/3 magnitudes and median per block"] = LAYERWISE_PNG
    if result.kept:
        block, hidden = next(iter(sorted(result.kept.items())))
        plot_activations_3d(
            hidden,
            result.tokens,
            directory / ACTIVATIONS_PNG,
            title=f"{result.model}: block {block} output",
            highlight_dims=result.summary["dims"],
        )
        figures[f"|activation| over tokens x dims, block {block}"] = ACTIVATIONS_PNG
    (directory / "report.md").write_text(markdown_report(result, figures), encoding="utf-8")
