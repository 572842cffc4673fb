"""The three views of a scan: a terminal table, a Markdown report, and files on disk."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from massact.outputs import write_json
from massact.report.figures import plot_activations_3d, plot_layerwise
from massact.scan import ScanResult

LAYERWISE_PNG = "layerwise.png"
ACTIVATIONS_PNG = "activations_3d.png"


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _show(text: str) -> str:
    return repr(text)[1:-1]


def terminal_summary(result: ScanResult, console: Console) -> None:
    """A table of every block: top activation, where it sits, the median and the ratio."""
    table = Table(title=f"massact scan: {result.model}", title_justify="left")
    for column in ("block", "top |x|", "value", "token", "dim", "median", "ratio", "massive"):
        table.add_column(column, justify="right" if column not in ("token",) else "left")
    flagged = {m.block for m in result.massive}
    for index, record in enumerate(result.records):
        value = float(record.top_values[0])
        token = int(record.top_tokens[0])
        ratio = abs(value) / record.median if record.median > 0 else float("inf")
        style = "bold red" if index in flagged else None
        table.add_row(
            str(index),
            _fmt(abs(value)),
            _fmt(value),
            f"{token} {_show(result.tokens[token])}",
            str(int(record.top_dims[0])),
            _fmt(record.median),
            _fmt(ratio),
            str(int(record.massive_values.numel())) + ("!" if record.nonfinite else ""),
            style=style,
        )
    console.print(table)
    summary = result.summary
    if summary["first_block"] is None:
        console.print(
            f"No massive activations (|x| > {result.thresholds.abs:g} and >= {result.thresholds.ratio:g} x median)."
        )
    else:
        console.print(
            f"Massive activations in blocks {summary['first_block']}..{summary['last_block']}, "
            f"dims {summary['dims']}, tokens "
            + ", ".join(f"{t['token']} {_show(t['token_text'])} ({t['token_kind']})" for t in summary["tokens"])
        )
    bad = [i for i, r in enumerate(result.records) if r.nonfinite]
    if bad:
        console.print(f"[bold red]inf/NaN in the output of blocks {bad}[/] (fp16 overflows at 65,504; try bfloat16)")


def markdown_report(result: ScanResult, figures: dict[str, str]) -> str:
    """A short report a person reads, figures embedded by relative path."""
    s = result.summary
    lines = [
        f"# massact scan: {result.model}",
        "",
        f"- blocks: {result.num_blocks} (`{result.structure.blocks_path}`), hidden size {result.hidden_size}, "
        f"dtype {result.dtype}",
        f"- prompt: `{_show(result.prompt or '')}` ({len(result.tokens)} tokens)",
        f"- criterion: |x| > {result.thresholds.abs:g} and |x| >= {result.thresholds.ratio:g} x block median",
        "",
    ]
    if s["first_block"] is None:
        lines.append("**No massive activations found.**")
    else:
        lines += [
            f"**Massive activations** appear at block {s['first_block']} and last until block {s['last_block']}, "
            f"in dims {', '.join(map(str, s['dims']))}.",
            "",
            "| token | text | kind | dim | blocks | peak value | peak block | ratio to median |",
            "|---:|---|---|---:|---|---:|---:|---:|",
        ]
        for site in s["sites"]:
            lines.append(
                f"| {site['token']} | `{_show(site['token_text'])}` | {site['token_kind']} | {site['dim']} | "
                f"{site['first_block']}-{site['last_block']} | {site['peak_value']:,.1f} | {site['peak_block']} | "
                f"{site['peak_ratio']:,.0f} |"
            )
    lines += [
        "",
        "## Per block",
        "",
        "| block | top 1 | top 2 | top 3 | median | top-1 / median |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    top1, top2, top3, med = (
        result.top_magnitudes(1),
        result.top_magnitudes(2),
        result.top_magnitudes(3),
        result.medians(),
    )
    for i in range(result.num_blocks):
        ratio = top1[i] / med[i] if med[i] > 0 else float("inf")
        lines.append(f"| {i} | {_fmt(top1[i])} | {_fmt(top2[i])} | {_fmt(top3[i])} | {_fmt(med[i])} | {ratio:,.0f} |")
    for caption, name in figures.items():
        lines += ["", f"![{caption}]({name})"]
    return "\n".join(lines) + "\n"


def write_scan_outputs(result: ScanResult, directory: Path) -> list[Path]:
    """scan.json, the two figures and report.md into `directory`."""
    written = [write_json(directory / "scan.json", result.to_json())]
    figures = {}
    written.append(
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
    )
    figures["Top-1/2/3 magnitudes and median per block"] = LAYERWISE_PNG
    if result.kept:
        block, hidden = next(iter(sorted(result.kept.items())))
        written.append(
            plot_activations_3d(
                hidden,
                result.tokens,
                directory / ACTIVATIONS_PNG,
                title=f"block {block} output",
                highlight_dims=result.summary["dims"][:6],
            )
        )
        figures[f"|activation| over tokens x dims, block {block}"] = ACTIVATIONS_PNG
    report = directory / "report.md"
    report.write_text(markdown_report(result, figures), encoding="utf-8")
    written.append(report)
    return written
