"""The views of a trace: terminal tables, a Markdown report, and trace.json."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from massact.outputs import write_json
from massact.quant_risk import markdown_table
from massact.trace.analysis import TraceResult
from massact.trace.writer import SiteTrace

STATES = ("original", "zeroed", "control", "restored")


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.4g}"


def _show(text: str) -> str:
    return repr(text)[1:-1]


def site_line(site: SiteTrace) -> str:
    needed = site.entries_needed
    return (
        f"token {site.token} `{_show(site.token_text)}` ({site.token_kind}), dim {site.dim}: "
        f"block {site.block} takes it "
        f"from {_num(site.value_in)} to {_num(site.value_out)} (attention {_num(site.attention_update)}, "
        f"MLP {_num(site.mlp_update)}, other {_num(site.other_update)}); written by `{site.module}`; "
        f"{needed['of_jump'] or 'no number of'} entries explain {site.share:.0%} of the jump "
        f"({needed['of_update'] or '-'} of the {site.writer} update)"
    )


def entry_rows(site: SiteTrace, limit: int) -> list[list[str]]:
    return [
        [
            str(rank),
            f"[{e.row}, {e.column}]",
            f"{e.weight:.4g}",
            _num(e.input),
            _num(e.input_ratio),
            _num(e.contribution),
            f"{e.share_of_jump:.1%}",
            f"{e.cumulative_share_of_jump:.1%}",
            f"{e.weight_rank:,}",
            _num(e.weight_ratio),
            _num(e.weight_sigma),
        ]
        for rank, e in enumerate(site.entries[:limit], 1)
    ]


ENTRY_HEADER = [
    "#",
    "W[row, col]",
    "weight",
    "input x",
    "|x| / median",
    "contribution",
    "share of jump",
    "cumulative",
    "|w| rank",
    "|w| / median",
    "sigma",
]


TERMINAL_COLUMNS = (0, 1, 2, 3, 5, 6, 7, 8)


def verification_rows(verification: dict | None) -> list[list[str]]:
    if not verification or not verification.get("states"):
        return []
    rows = []
    for name in STATES:
        state = verification["states"][name]
        values = ", ".join(_num(s["value_at_peak_block"]) for s in state["sites"])
        massive = ", ".join("yes" if s["massive"] else "no" for s in state["sites"])
        rows.append([name, values, massive, str(state["num_massive"]), _num(state.get("perplexity"))])
    return rows


VERIFY_HEADER = ["state", "site value at peak block", "still massive", "massive entries", "perplexity"]


def terminal_report(result: TraceResult, console: Console, limit: int = 10) -> None:
    """Sites, the top entries of each, the verification and the quantization-risk table."""
    if not result.sites:
        console.print(
            f"No massive activations in {result.model} on this prompt (|x| > {result.thresholds.abs:g} and "
            f">= {result.thresholds.ratio:g} x median): nothing to trace."
        )
    for site in result.sites:
        console.print(site_line(site))
        if site.note:
            console.print(f"  {site.note}")
        table = Table(title=f"{site.module}: entries writing dim {site.dim}", title_justify="left")
        for column in TERMINAL_COLUMNS:
            table.add_column(ENTRY_HEADER[column], justify="right")
        for row in entry_rows(site, limit):
            table.add_row(*(row[column] for column in TERMINAL_COLUMNS))
        console.print(table)
    rows = verification_rows(result.verification)
    if rows:
        table = Table(title="verification: zero the reported entries, then restore", title_justify="left")
        for column in VERIFY_HEADER:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        if result.verification.get("note"):
            console.print(result.verification["note"])
    if result.quant_risk:
        table = Table(title="int8 per-tensor quantization of each block output", title_justify="left")
        for column in ("block", "massive", "max |x|", "max |x| w/o", "median", "err with", "err w/o", "to 0 with"):
            table.add_column(column, justify="right")
        for r in result.quant_risk:
            table.add_row(
                str(r["block"]),
                str(r["massive_entries"]),
                _num(r["max_abs"]),
                _num(r["max_abs_without"]),
                _num(r["median_abs"]),
                f"{r['int8_error_with']:.1%}",
                f"{r['int8_error_without']:.1%}",
                f"{r['zeroed_with']:.1%}",
            )
        console.print(table)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown_report(result: TraceResult, limit: int = 10) -> str:
    lines = [
        f"# massact trace: {result.model}",
        "",
        f"- prompt: `{_show(result.prompt)}` ({len(result.tokens)} tokens)",
        "",
    ]
    if not result.sites:
        lines.append("**No massive activations on this prompt: nothing to trace.**")
    for site in result.sites:
        lines += [f"## Site: token {site.token}, dim {site.dim}", "", site_line(site) + ".", ""]
        lines += _md_table(ENTRY_HEADER, entry_rows(site, limit)) + [""]
    rows = verification_rows(result.verification)
    if rows:
        v = result.verification
        lines += [
            "## Verification",
            "",
            f"Zeroed {len(v['entries'])} entries; control: {len(v['control_entries'])} random entries of the same "
            f"matrices (seed {v['control_seed']}); perplexity windows {v['windows']}; restored bit-exact: "
            f"{v['restored_exact']}.",
            "",
            *_md_table(VERIFY_HEADER, rows),
            "",
        ]
    if result.quant_risk:
        lines += [
            "## Quantization risk (int8, per tensor, block outputs)",
            "",
            "Error = relative RMS error on the ordinary (non-massive) values; *with*: massive values set the scale; "
            "*w/o*: they are kept aside in high precision. *to 0*: share of non-zero ordinary values that round to 0.",
            "",
            markdown_table(result.quant_risk),
            "",
        ]
    return "\n".join(lines) + "\n"


def write_trace_outputs(result: TraceResult, directory: Path) -> list[Path]:
    report = directory / "report.md"
    report.write_text(markdown_report(result), encoding="utf-8")
    return [write_json(directory / "trace.json", result.to_json()), report]
