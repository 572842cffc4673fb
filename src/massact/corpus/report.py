"""Views of a corpus summary: terminal table, corpus.json, means.json, report.md and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.console import Console
from rich.table import Table
from rich.text import Text

from massact.corpus.summary import MEANS_JSON, CorpusSummary
from massact.detect import MASSIVE
from massact.format import fmt_activation as _fmt
from massact.format import md_code, md_escape, show_token
from massact.outputs import write_json
from massact.precision import Precision
from massact.report.figures import plot_layerwise, save_figure
from massact.report.tables import numeric_column, print_table

KIND = "corpus"  # the `kind` field of the JSON: which result this is

CORPUS_JSON = "corpus.json"
LAYERWISE_PNG = "layerwise.png"
CONSTANCY_PNG = "constancy.png"
REPORT_MD = "report.md"
MAX_CONSTANCY_PANELS = 4


def derived(summary: CorpusSummary) -> dict:
    """The readable result: per-block bands, sites, emergence and fading, top activations."""
    return {
        "model": summary.model,
        "hidden_size": summary.hidden_size,
        "num_blocks": summary.num_blocks,
        "num_sequences": summary.num_sequences,
        "seq_len": summary.seq_len,
        "prefix_tokens": summary.prefix_tokens,
        "sources": summary.sources,
        "thresholds": summary.thresholds.to_json(),
        "nonfinite": summary.nonfinite,
        "layerwise": summary.layerwise(),
        "fraction_with_massive": (summary.arrays()["massive_counts"] > 0).mean(0).tolist(),
        "outlier_features": [{"dim": d, "token_share": v} for d, v in summary.features().items()],
        "groups": summary.groups(),
        "sites": summary.site_rows(),
        "top": [[{"value": v, "sequence": r, "token": t, "dim": d} for v, r, t, d in block] for block in summary.top],
    }


def source_label(source: str) -> str:
    """A window source for people: 'shakespeare (windows of 128 tokens, starting with <s>)'."""
    corpus, *parts = source.split("|")
    fields = dict(part.split("=", 1) for part in parts if "=" in part)
    words = [f"windows of {fields['seq_len']} tokens"] if "seq_len" in fields else []
    if fields.get("prefix"):
        words.append(f"starting with {fields['prefix']}")
    return f"{corpus} ({', '.join(words)})" if words else corpus


def feature_line(summary: CorpusSummary) -> str | None:
    """The outlier features in words (dims that pass the criterion on most tokens), or None."""
    features = summary.features()
    if not features:
        return None
    shown = ", ".join(f"dim {d} on {share:.0%} of the tokens" for d, share in features.items())
    return (
        f"Outlier features (large on most tokens, not massive activations; more than "
        f"{summary.thresholds.feature_share:.0%} of the tokens in one block): {shown}."
    )


def terminal_summary(summary: CorpusSummary, console: Console) -> None:
    """One row per massive (dim, token kind): where it emerges, peaks and fades, its value and CV."""
    groups = [g for g in summary.groups() if g["kind"] == MASSIVE]
    title = f"massact corpus scan: {summary.model}, {summary.num_sequences} sequences x {summary.seq_len} tokens"
    if summary.prefix_tokens:
        title += f", each starting with {' '.join(summary.prefix_tokens)}"
    table = Table(title=Text(title), title_justify="left")
    for column in ("dim", "token kind", "blocks", "fade", "peak block", "mean", "cv", "in seqs", "tokens"):
        if column in ("token kind", "tokens"):
            table.add_column(column)
        else:
            numeric_column(table, column)
    for g in groups:
        table.add_row(
            str(g["dim"]),
            g["token_kind"],
            f"{g['emerge_block']}..{g['last_block']}",
            "-" if g["fade_block"] is None else str(g["fade_block"]),
            str(g["peak_block"]),
            _fmt(g["peak_mean"]),
            f"{g['peak_cv']:.3f}",
            f"{g['frequency']:.0%}",
            Text(" ".join(show_token(t) for t in g["tokens"][:3])),  # token text, never markup
        )
    print_table(console, table)
    if not groups:
        console.print("No massive site occurs in at least half of the sequences.")
    if (line := feature_line(summary)) is not None:
        console.print(Text(line))
    if summary.nonfinite:
        console.print(f"[red]{summary.nonfinite} non-finite activations (inf/NaN): try --dtype float32[/red]")


def plot_constancy(summary: CorpusSummary, path: Path) -> Path:
    """Per-sequence value of the main massive (dim, kind) pairs at their peak block, with a histogram."""
    groups = [g for g in summary.groups() if g["kind"] == MASSIVE][:MAX_CONSTANCY_PANELS]
    panels = max(len(groups), 1)
    fig = Figure(figsize=(9, 2.4 * panels), dpi=150)
    axes = fig.subplots(panels, 2, squeeze=False)
    for row, g in enumerate(groups):
        site = summary.sites[(g["peak_block"], g["dim"], g["token_kind"])]
        rows = np.asarray(list(site.per_sequence.keys()))
        values = np.asarray(list(site.per_sequence.values()))
        label = f"dim {g['dim']}, {g['token_kind']} token, block {g['peak_block']}"
        axes[row, 0].plot(rows, values, "o", markersize=3, color="C3", label="each sequence's largest-|x| value")
        axes[row, 0].axhline(values.mean(), color="k", linewidth=0.8, label="mean of these points")
        axes[row, 0].set_title(
            f"{label}: over all {site.count:,} occurrences mean {_fmt(site.mean)}, cv {site.cv:.3f}", fontsize=8
        )
        axes[row, 0].set_xlabel("sequence")
        axes[row, 0].set_ylabel("value")
        axes[row, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[row, 0].legend(fontsize=6)
        axes[row, 1].hist(values, bins=30, color="C3")
        axes[row, 1].set_xlabel("each sequence's largest-|x| value")
        axes[row, 1].set_ylabel("sequences")
        axes[row, 1].ticklabel_format(axis="x", useOffset=False, style="plain")  # no "+1.02e5" offset label
        axes[row, 1].xaxis.set_major_locator(MaxNLocator(nbins=4))
        axes[row, 1].yaxis.set_major_locator(MaxNLocator(integer=True))
    if not groups:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no massive site in half of the sequences", ha="center", va="center")
            ax.set_axis_off()
    return save_figure(fig, path)


def markdown(summary: CorpusSummary, command: str | None = None, precision: Precision | None = None) -> str:
    """report.md: what was scanned, the main sites with their constancy, and the figures."""
    lines = [f"# Corpus scan: {summary.model}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [
        f"{summary.num_sequences} sequences of {summary.seq_len} tokens from "
        f"{md_escape(', '.join(source_label(name) for name in summary.sources))}; "
        f"massive = |x| > {summary.thresholds.abs:g} and >= {summary.thresholds.ratio:g} x the block median.",
        "",
        "## Massive activations present in at least half of the sequences",
        "",
        "| dim | token kind | blocks | fades at | peak block | mean at peak | CV at peak | mean at emergence "
        "| CV at emergence | in sequences | carried by |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for g in summary.groups():
        if g["kind"] != MASSIVE:
            continue
        lines.append(
            f"| {g['dim']} | {g['token_kind']} | {g['emerge_block']}..{g['last_block']} | "
            f"{'-' if g['fade_block'] is None else g['fade_block']} | {g['peak_block']} | {_fmt(g['peak_mean'])} | "
            f"{g['peak_cv']:.4f} | {_fmt(g['emerge_mean'])} | {g['emerge_cv']:.4f} | {g['frequency']:.0%} | "
            + ", ".join(md_code(t) for t in g["tokens"][:5])
            + " |"
        )
    if (line := feature_line(summary)) is not None:
        lines += ["", md_escape(line)]
    if summary.nonfinite:
        lines += ["", f"**{summary.nonfinite} non-finite activations (inf/NaN) were seen.**"]
    if precision is not None and precision.warning:
        lines += ["", *precision.markdown()]
    lines += [
        "",
        "## Figures",
        "",
        f"![layer-wise magnitudes, mean and std over sequences]({LAYERWISE_PNG})",
        "",
        f"![value of the main massive activations per sequence]({CONSTANCY_PNG})",
        "",
        f"All sites: `{CORPUS_JSON}`; means for interventions: `{MEANS_JSON}`; mergeable state: "
        "`summary.json` + `summary.safetensors` (`massact merge`).",
        "",
    ]
    return "\n".join(lines)


def corpus_json(summary: CorpusSummary, precision: Precision | None = None, execution: dict | None = None) -> dict:
    """What corpus.json holds: the corpus-wide statistics, whether the run's dtype held the block outputs, and
    how the run executed (`LoadedModel.execution`; a merge has none)."""
    data = {"kind": KIND} | derived(summary) | {"precision": precision.to_json() if precision else None}
    return data | ({"execution": execution} if execution is not None else {})


def write_corpus_outputs(
    summary: CorpusSummary,
    folder: Path,
    command: str | None = None,
    precision: Precision | None = None,
    execution: dict | None = None,
) -> None:
    """Every file of a corpus scan into `folder` (a staging directory)."""
    summary.save(folder)
    write_json(folder / CORPUS_JSON, corpus_json(summary, precision, execution))
    write_json(folder / MEANS_JSON, summary.means())
    bands = summary.layerwise()
    plot_layerwise(
        {name: v["mean"] for name, v in bands.items()},
        folder / LAYERWISE_PNG,
        f"{summary.model}: {summary.num_sequences} sequences (mean, band = 1 std)",
        spread={name: v["std"] for name, v in bands.items()},
    )
    plot_constancy(summary, folder / CONSTANCY_PNG)
    (folder / REPORT_MD).write_text(markdown(summary, command, precision), encoding="utf-8")
