"""The terminal table, the Markdown report and the files of an attention analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from massact.attention.config import AttentionConfig
from massact.attention.figures import plot_attention_map, plot_constancy, plot_sinks
from massact.format import md_code, md_escape
from massact.outputs import write_json
from massact.precision import Precision
from massact.report.tables import numeric_column, print_table


class AttentionView(Protocol):
    """What the views read of an attention result (a protocol, so that the views import no result)."""

    model: str
    num_blocks: int
    num_heads: int
    source: dict
    tokens: list[str]
    heatmap_block: int
    options: AttentionConfig
    sequences: list  # SequenceAttention per sequence: .blocks, .maps, .sinks, ...
    prefix_tokens: list[str] | None
    model_source: str | None
    quantization: str | None
    precision: Precision | None

    @property
    def tokens_chosen(self) -> bool: ...

    @property
    def first_massive_block(self) -> int | None: ...

    @property
    def learned_sinks(self) -> bool: ...

    @property
    def no_softmax_blocks(self) -> list[int]: ...

    def block_summary(self) -> list[dict]: ...

    def to_json(self) -> dict: ...


COLUMNS = ("block", "sink", "imp 1st", "mass C", "C cos", "C var", "C share", "Δ mean", "Δ zero")
CAPTION = (
    "sink: fraction of heads whose first-token importance > {threshold}; imp 1st: mean over heads of the first "
    "token's importance; mass C: attention mass on C; C cos / C var / C share: the C part of the output (all heads) - "
    "cosine to its mean over queries, relative variance, share of the output norm; Δ mean / Δ zero: |block output "
    "change| / |block update| with the C part replaced by its mean / removed"
)


LEARNED_COLUMN = "learned sink"
LEARNED_CAPTION = (
    "learned sink: mean over heads and queries of the learned sink logit's share exp(s) / (Z + exp(s)), "
    "Z the sum of exp(logit) over the keys a query sees"
)


def learned_sinks_table(result: AttentionView, rows: list[dict]) -> list[str]:
    """Markdown: per block, each head's learned-sink share beside its first-token importance (the token sink)."""
    lines = [
        "## Learned sinks per head",
        "",
        "| block | learned-sink share, heads 0.. | first-token importance, heads 0.. |",
        "|---:|---|---|",
    ]
    for r in rows:
        shares = " ".join(_fmt(v, 2) for v in r["per_head"]["learned_sink_share"])
        first = " ".join(_fmt(v, 2) for v in r["per_head"]["first_importance"])
        lines.append(f"| {r['index']} | {shares} | {first} |")
    return lines


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _positions(positions: list[int]) -> str:
    return ", ".join(map(str, positions))


def tokens_sentence(result: AttentionView) -> str:
    """The tokens C and where massive activations start, in plain words."""
    sinks = result.sequences[0].sinks
    count = len(result.sequences)
    first = result.first_massive_block
    where = "the first sequence" if count > 1 else "the sequence"
    if result.tokens_chosen:
        c = f"C is the chosen token{'s' if len(sinks) != 1 else ''} at position{'s' if len(sinks) != 1 else ''} " + (
            _positions(sinks) or "(none)"
        )
    elif sinks:
        shown = ", ".join(f"{p} ({result.tokens[p]!r})" if p < len(result.tokens) else str(p) for p in sinks)
        c = f"C is the massive-activation token{'s' if len(sinks) != 1 else ''} of {where}: {shown}"
    else:
        c = f"No token of {where} has massive activations, so C is empty"
    if first is None:
        massive = "no block has massive activations"
    else:
        earliest = f" (the earliest over the {count} sequences)" if count > 1 else ""
        massive = f"massive activations appear from block {first}{earliest}"
    features = result.sequences[0].features
    if features:  # large on most tokens: an outlier feature, whose tokens are not C
        shown = ", ".join(f"dim {d} ({share:.0%} of tokens)" for d, share in features.items())
        massive += f"; outlier feature{'s' if len(features) != 1 else ''} left out of C: {shown}"
    return f"{c}; {massive}."


def _columns(result: AttentionView) -> tuple[str, ...]:
    """The table's columns: a learned-sink column beside the token-sink ones when the model has learned sinks."""
    return (*COLUMNS[:3], LEARNED_COLUMN, *COLUMNS[3:]) if result.learned_sinks else COLUMNS


def _caption(result: AttentionView) -> str:
    caption = CAPTION.format(threshold=result.options.threshold)
    return f"{caption}; {LEARNED_CAPTION}" if result.learned_sinks else caption


def _cells(result: AttentionView, r: dict) -> list[str]:
    """One block's row of the table; `-` throughout for a block without softmax attention."""
    cells = [
        str(r["index"]),
        _fmt(r["sink_fraction"], 2),
        *(
            _fmt(r[k])
            for k in (
                "first_token_importance",
                "massive_mass",
                "block_c_cosine",
                "block_c_relvar",
                "block_c_share",
                "replace_mean_change",
                "replace_zero_change",
            )
        ),
    ]
    if result.learned_sinks:
        cells.insert(3, _fmt(r["learned_sink_share"]))
    return cells


def mixers_sentence(result: AttentionView) -> str | None:
    """The blocks without softmax attention, in plain words (None when every block has it)."""
    blocks = result.no_softmax_blocks
    if not blocks:
        return None
    mixers = sorted({str(result.sequences[0].blocks[i].extra.get("mixer")) for i in blocks})
    return (
        f"Block{'s' if len(blocks) != 1 else ''} {_positions(blocks)} run{'s' if len(blocks) == 1 else ''} "
        f"no softmax attention ({', '.join(mixers)}: linear attention or a state-space layer), so "
        f"{'they have' if len(blocks) != 1 else 'it has'} no attention map and no sink measures (shown as -)."
    )


def show_attention(result: AttentionView, console: Console) -> None:
    """One row per block: sink heads, first-token importance, mass on C, C-part constancy, replacement effect."""
    title = f"{escape(result.model)}: attention per block, {len(result.sequences)} sequence(s)"
    table = Table(title=title, caption=_caption(result))
    for name in _columns(result):
        numeric_column(table, name)
    for r in result.block_summary():
        table.add_row(*_cells(result, r))
    print_table(console, table)
    console.print(tokens_sentence(result), markup=False)
    if mixers_sentence(result):
        console.print(mixers_sentence(result), markup=False)
    if result.precision is not None:
        result.precision.show(console)


def markdown_report(result: AttentionView, figures: dict[str, str]) -> str:
    """A short report: where the inputs came from, the tokens C, one row per block, the figures."""
    source = result.source
    lines = [f"# massact attention: {md_escape(result.model)}", ""]
    if result.model_source and result.model_source != result.model:
        lines.append(f"- model file: {md_code(result.model_source, table=False)}")
    if result.quantization:
        lines.append(f"- weights: {md_escape(result.quantization)}")
    if "corpus" in source:
        prefix = result.prefix_tokens or []
        start = ", each starting with " + ", ".join(md_code(t, table=False) for t in prefix) if prefix else ""
        lines.append(
            f"- input: {source['samples']} windows of {source['seq_len']} tokens "
            f"from {md_code(source['corpus'], table=False)} "
            f"(seed {source['seed']}){start}"
        )
    elif "prompt" in source:
        lines.append(f"- prompt: {md_code(source['prompt'], table=False)} ({len(result.tokens)} tokens)")
    lines += [
        f"- {result.num_blocks} blocks, {result.num_heads} heads; sink head: first-token importance > "
        f"{result.options.threshold}",
        "",
        md_escape(tokens_sentence(result)),
        "",
        "| " + " | ".join(_columns(result)) + " |",
        "|" + "---:|" * len(_columns(result)),
    ]
    rows = result.block_summary()
    lines += ["| " + " | ".join(_cells(result, r)) + " |" for r in rows]
    lines += ["", md_escape(_caption(result)) + "."]
    if mixers_sentence(result):
        lines += ["", md_escape(mixers_sentence(result))]
    if result.learned_sinks:
        lines += ["", *learned_sinks_table(result, rows)]
    if result.precision is not None and result.precision.warning:
        lines += ["", *result.precision.markdown()]
    for caption, name in figures.items():
        lines += ["", f"![{caption}]({name})"]
    return "\n".join(lines) + "\n"


def write_attention(result: AttentionView, out: Path) -> None:
    """attention.json, the heatmap(s), the per-block figures and report.md into `out`."""
    rows = result.block_summary()
    write_json(out / "attention.json", result.to_json())
    first = result.sequences[0]
    block = result.heatmap_block
    figures = {}
    which = f", first of {len(result.sequences)} sequences" if len(result.sequences) > 1 else ""
    if first.heatmap is not None:
        name = f"attention_block{block}.png"
        title = f"{result.model}: block {block}, attention probabilities (mean over heads{which})"
        plot_attention_map(first.heatmap, result.tokens, out / name, title)
        figures[f"Attention probabilities at block {block}, first sequence"] = name
    if first.heatmap_logits is not None:
        name = f"attention_logits_block{block}.png"
        title = f"{result.model}: block {block}, attention logits (mean over heads{which})"
        plot_attention_map(first.heatmap_logits, result.tokens, out / name, title, "logit")
        figures[f"Attention logits at block {block}, first sequence"] = name
    fm = result.first_massive_block
    c_name = "chosen tokens" if result.tokens_chosen else "massive tokens"
    plot_sinks(rows, out / "attention_sinks.png", f"{result.model}: attention sinks per block", fm, c_name)
    figures["Sink heads and attention on C per block"] = "attention_sinks.png"
    title = f"{result.model}: the {c_name}' attention output"
    plot_constancy(rows, out / "attention_bias.png", title, fm)
    figures["How constant the C part of the attention output is, per block"] = "attention_bias.png"
    (out / "report.md").write_text(markdown_report(result, figures), encoding="utf-8")
