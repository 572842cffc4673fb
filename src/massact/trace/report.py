"""The views of a trace: terminal tables and a Markdown report."""

from __future__ import annotations

import math
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from massact.capture.risk import markdown_table
from massact.detect import Thresholds
from massact.format import md_code, show_token
from massact.trace.writer import SiteTrace


class TraceView(Protocol):
    """What the views read of a trace's result (a protocol, so that the views import no result)."""

    model: str
    prompt: str
    tokens: list[str]
    thresholds: Thresholds
    sites: list[SiteTrace]
    verification: dict | None
    quant_risk: list[dict] | None
    windows: dict | None


STATES = ("original", "zeroed", "control", "restored")
WIDE = 10_000  # measuring width: a table's natural width is never more than this


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.4g}"


def _writer_text(site: SiteTrace) -> str:
    if site.post_norm is not None:
        return f"the {site.writer} through the norm after it, `{site.module}` (its gain on dim {site.dim})"
    if site.writer is None:
        return "no single sub-layer"
    if site.expert is None:
        return f"`{site.module}`" if site.module else f"the {site.writer}"
    routed = {e["expert"]: e["router_weight"] for e in site.experts}
    return f"expert {site.expert} of `{site.module}` (router weight {routed.get(site.expert, math.nan):.3g})"


def entry_header(site: SiteTrace) -> list[str]:
    """The entry table's header; a fused expert entry is indexed [expert, row, col] as stored."""
    if site.expert is None:
        return ENTRY_HEADER
    return ["#", "stored index", *ENTRY_HEADER[2:]]


def site_line(site: SiteTrace) -> str:
    needed = site.entries_needed
    return (
        f"token {site.token} {md_code(show_token(site.token_text))} ({site.token_kind}), dim {site.dim}: "
        f"block {site.block} takes it "
        f"from {_num(site.value_in)} to {_num(site.value_out)} (attention {_num(site.attention_update)}, "
        f"MLP {_num(site.mlp_update)}, other {_num(site.other_update)}); written by {_writer_text(site)}; "
        f"{needed['of_jump'] or 'no number of'} entries explain {site.share:.0%} of the jump "
        f"({needed['of_update'] or '-'} of the {site.writer} update)"
    )


def expert_rows(site: SiteTrace) -> list[list[str]]:
    """The routed experts on the site's token (and the shared experts), largest update first."""
    rows = [
        [str(e["expert"]), f"{e['router_weight']:.3g}", _num(e["expert_output"]), _num(e["update"])]
        for e in sorted(site.experts, key=lambda e: -abs(e["update"]))
    ]
    if site.shared_update is not None:
        rows.append(["shared", "-", "-", _num(site.shared_update)])
    return rows


EXPERT_HEADER = ["expert", "router weight", "expert output", "weight x output"]


def _index(entry) -> str:
    if len(entry.stored_index) == 1:  # a norm's gain: one entry per dim
        return f"[{entry.row}]"
    return str(list(entry.stored_index)) if entry.expert is not None else f"[{entry.row}, {entry.column}]"


def entry_rows(site: SiteTrace, limit: int) -> list[list[str]]:
    return [
        [
            str(rank),
            _index(e),
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
RISK_HEADER = ["block", "massive", "max |x|", "max |x| w/o", "median", "err with", "err w/o", "to 0 with"]


def risk_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            str(r["block"]),
            str(r["massive_entries"]),
            _num(r["max_abs"]),
            _num(r["max_abs_without"]),
            _num(r["median_abs"]),
            f"{r['int8_error_with']:.1%}",
            f"{r['int8_error_without']:.1%}",
            f"{r['zeroed_with']:.1%}",
        ]
        for r in rows
    ]


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    """A right-aligned table whose numbers fold onto a second line rather than being cut."""
    table = Table(title=escape(title), title_justify="left")
    for column in header:
        table.add_column(escape(column), justify="right", overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def print_table(console: Console, table: Table) -> None:
    """Print `table` whole: when the output is not a terminal, at the width the table needs."""
    if console.is_terminal:
        console.print(table)
        return
    needed = Measurement.get(console, console.options.update_width(WIDE), table).maximum
    width = console.width
    console.width = max(needed, width)
    try:
        console.print(table)
    finally:
        console.width = width


def terminal_report(result: TraceView, console: Console, limit: int = 10) -> None:
    """Sites, the experts and top entries of each, the verification and the quantization-risk table."""
    if not result.sites:
        console.print(
            f"No massive activations in {escape(result.model)} on this prompt (|x| > {result.thresholds.abs:g} and "
            f">= {result.thresholds.ratio:g} x median): nothing to trace."
        )
    for site in result.sites:
        console.print(escape(site_line(site)), highlight=False)
        if site.note:
            console.print(escape(f"  {site.note}"), highlight=False)
        if site.experts:
            print_table(
                console,
                _table(f"block {site.block}: routed experts on token {site.token}", EXPERT_HEADER, expert_rows(site)),
            )
        rows = [[row[c] for c in TERMINAL_COLUMNS] for row in entry_rows(site, limit)]
        header = [entry_header(site)[c] for c in TERMINAL_COLUMNS]
        if rows:
            print_table(console, _table(f"{site.module}: entries writing dim {site.dim}", header, rows))
    rows = verification_rows(result.verification)
    if rows:
        print_table(console, _table("verification: zero the reported entries, then restore", VERIFY_HEADER, rows))
    if result.quant_risk:
        title = "int8 per-tensor quantization of each block output"
        print_table(console, _table(title, RISK_HEADER, risk_rows(result.quant_risk)))


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---:|" * len(header), *(line(row) for row in rows)]


def markdown_report(result: TraceView, limit: int = 10) -> str:
    lines = [
        f"# massact trace: {result.model}",
        "",
        f"- prompt: {md_code(result.prompt)} ({len(result.tokens)} tokens)",
    ]
    if result.windows:
        w = result.windows
        prefix = ", ".join(md_code(t) for t in w["prefix_tokens"]) or "none"
        lines.append(
            f"- windows: {w['samples']} x {w['seq_len']} tokens of {md_code(w['corpus'])} (seed {w['seed']}), "
            f"each starting with the tokenizer's prefix: {prefix}"
        )
    lines.append("")
    if not result.sites:
        lines.append("**No massive activations on this prompt: nothing to trace.**")
    for site in result.sites:
        lines += [f"## Site: token {site.token}, dim {site.dim}", "", site_line(site) + ".", ""]
        if site.note:
            lines += [site.note, ""]
        if site.experts:
            lines += ["Routed experts on the token (router weight x expert output at the dim):", ""]
            lines += _md_table(EXPERT_HEADER, expert_rows(site)) + [""]
        if site.entries:
            lines += _md_table(entry_header(site), entry_rows(site, limit)) + [""]
    rows = verification_rows(result.verification)
    if rows:
        v = result.verification
        scored = v["states"]["original"].get("tokens")
        lines += [
            "## Verification",
            "",
            f"Zeroed {len(v['entries'])} entries; control: {len(v['control_entries'])} random entries of the same "
            f"parameters (seed {v['control_seed']}); perplexity windows {v['windows']}"
            + (f", {scored:,} text tokens scored" if scored else "")
            + f"; restored bit-exact: {v['restored_exact']}.",
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
