"""`massact intervene`: perplexity with the massive activations zeroed, set to their mean, or a random control."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from massact.commands.common import (
    AbsThresholdOpt,
    BlocksOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ModelArg,
    OutOpt,
    RatioThresholdOpt,
    TrustOpt,
    console,
    load_for_cli,
)
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.interventions.hooks import MODES, SiteSpec, blocks_span
from massact.interventions.means import read_means
from massact.interventions.run import InterventionConfig, InterventionResult, parse_ints, parse_modes, run_interventions
from massact.models.structure import find_structure
from massact.outputs import check_output_dir, staged_output, write_json


def _ppl(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return f"{value:,.3f}" if value < 1e6 else f"{value:.3e}"


def results_table(result: InterventionResult) -> Table:
    """The paper's table: one row per mode, one perplexity column per corpus."""
    cfg = result.config
    table = Table(
        title=f"perplexity, {result.model}, {cfg.samples} x {cfg.seq_len} tokens, "
        f"block(s) {blocks_span(result.blocks)}",
        title_justify="left",
    )
    table.add_column("mode")
    for corpus in cfg.corpora:
        table.add_column(corpus, justify="right")
    table.add_column("sites / window", justify="right")
    for mode in cfg.modes:
        rows = [r for r in result.rows if r["mode"] == mode]
        sites = rows[0]["sites_per_window"] if rows else 0.0
        table.add_row(mode, *(_ppl(r["perplexity"]) for r in rows), f"{sites:.1f}" if mode != "original" else "")
    return table


def block_map_lines(result: InterventionResult) -> list[str]:
    """Which blocks carry which massive dims, and the spikes below the criterion."""
    survey = result.survey
    lines = [f"massive dims on the {survey.sequences} surveyed windows (on at least half of them):"]
    for row in survey.dim_spans():
        line = f"  dim {row['dim']}: blocks {blocks_span(row['blocks'])}"
        if row["below_criterion_blocks"]:
            line += (
                f"; below the criterion at blocks {blocks_span(row['below_criterion_blocks'])}"
                f" (top value up to {row['below_criterion_max_ratio']:,.0f}x the median)"
            )
        lines.append(line)
    if len(lines) == 1:
        lines.append("  none")
    after = result.after_zero
    if after is not None:
        lines.append(
            f"with the zero intervention at block(s) {blocks_span(result.blocks)} ({after.sequences} windows):"
        )
        start = min(result.blocks)  # blocks before the hooked ones are not changed by it
        spans = [(row["dim"], [b for b in row["blocks"] if b >= start]) for row in after.dim_spans()]
        spans = [(dim, blocks) for dim, blocks in spans if blocks]
        lines += [f"  dim {dim}: massive at blocks {blocks_span(blocks)}" for dim, blocks in spans]
        if not spans:
            lines.append(f"  no massive activation at blocks {start} and after")
    return lines


def write_markdown(result: InterventionResult, path: Path, command: str) -> None:
    cfg = result.config
    head = "| mode | " + " | ".join(cfg.corpora) + " | sites / window |"
    lines = [
        f"# massact intervene: {result.model}",
        "",
        f"`{command}`",
        "",
        f"{cfg.samples} windows of {cfg.seq_len} tokens, block(s) {blocks_span(result.blocks)}, "
        f"means from {result.means_source}.",
        "",
        head,
        "|" + " --- |" * (len(cfg.corpora) + 2),
    ]
    for mode in cfg.modes:
        rows = [r for r in result.rows if r["mode"] == mode]
        sites = f"{rows[0]['sites_per_window']:.1f}" if rows and mode != "original" else ""
        lines.append(f"| {mode} | " + " | ".join(_ppl(r["perplexity"]) for r in rows) + f" | {sites} |")
    lines += ["", *(f"- {line.strip()}" if line.startswith("  ") else line for line in block_map_lines(result)), ""]
    lines += [f"- {note}" for note in result.notes]
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def intervene_command(
    model: ModelArg = "default",
    corpus: Annotated[
        str, typer.Option("--corpus", help="Comma-separated corpora (names, .txt, folders, .jsonl).")
    ] = "shakespeare",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Windows evaluated per corpus.")] = 16,
    seq_len: Annotated[int, typer.Option("--seq-len", min=2, help="Tokens per window.")] = 512,
    block: Annotated[
        str | None,
        typer.Option(
            "--block", help="L, or L- for blocks L..last (default: the first block with massive activations)."
        ),
    ] = None,
    modes: Annotated[str, typer.Option("--modes", help=f"Comma-separated, from {','.join(MODES)}.")] = ",".join(MODES),
    means: Annotated[
        Path | None, typer.Option("--means", help="means.json of a corpus scan for the mean mode.")
    ] = None,
    means_samples: Annotated[
        int, typer.Option("--means-samples", min=1, help="Held-out windows for the means, when no --means file.")
    ] = 32,
    dims: Annotated[str | None, typer.Option("--dims", help="Only these dims (comma-separated).")] = None,
    tokens: Annotated[
        str | None, typer.Option("--tokens", help="Only these token positions (comma-separated).")
    ] = None,
    abs_threshold: AbsThresholdOpt = 100.0,
    ratio_threshold: RatioThresholdOpt = 1000.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the windows and the random control.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per forward pass.")] = 8,
    out: OutOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    blocks: BlocksOpt = None,
) -> None:
    """Perplexity of MODEL with its massive activations zeroed, set to their mean, or a random control zeroed."""
    mode_list = parse_modes(modes)
    corpora = list(dict.fromkeys(c.strip() for c in corpus.split(",") if c.strip()))
    if not corpora:
        raise MassactError("--corpus is empty; give a corpus name or path, e.g. --corpus shakespeare")
    sites = SiteSpec(
        thresholds=Thresholds(abs=abs_threshold, ratio=ratio_threshold),
        dims=parse_ints(dims, "--dims"),
        tokens=parse_ints(tokens, "--tokens"),
    )
    site_means = read_means(means) if means is not None else None
    if out is not None:
        check_output_dir(out)
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    config = InterventionConfig(
        corpora=corpora,
        samples=samples,
        seq_len=seq_len,
        block=block,
        modes=mode_list,
        sites=sites,
        means=site_means,
        means_samples=means_samples,
        seed=seed,
        batch_size=batch_size,
    )
    result = run_interventions(loaded, config, structure=find_structure(loaded.model, blocks), log=console.log)
    stdout = Console()
    stdout.print(results_table(result))
    for line in block_map_lines(result):
        stdout.print(line, highlight=False)
    for note in result.notes:
        stdout.print(f"note: {note}", highlight=False)
    if out is not None:
        command = "massact " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        with staged_output(out) as staging:
            write_json(staging / "intervene.json", result.to_json())
            if result.means is not None and site_means is None:
                write_json(staging / "means.json", result.means.to_json())
            write_markdown(result, staging / "report.md", command)
        console.print(f"wrote {out}/intervene.json and report.md")


def register(app: typer.Typer) -> None:
    app.command("intervene")(intervene_command)
