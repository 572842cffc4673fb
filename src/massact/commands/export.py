"""`massact export`: massive sites, activation scales and outlier tokens, as files other tools read."""

from __future__ import annotations

from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, ThresholdOptions, emit_result, model_command
from massact.errors import MassactError


@model_command
def export_command(
    model: Opt.Model = "default",
    formats: Annotated[
        list[str],
        typer.Option(
            "--format",
            help="sites, act-scales, outlier-tokens, recipe or all (default: these four), and imatrix "
            "(llama.cpp importance matrix); repeat or comma-separate.",
        ),
    ] = ("all",),  # type: ignore[assignment]
    corpus: Annotated[
        str, typer.Option("--corpus", help="Corpus name or path (.txt, folder, .jsonl).")
    ] = "shakespeare",
    samples: Annotated[int, typer.Option("--samples", help="Corpus windows.")] = 32,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed that picks the windows.")] = 0,
    detection: ThresholdOptions = ThresholdOptions(),
    no_special_tokens: Annotated[
        bool, typer.Option("--no-special-tokens", help="Windows without the tokenizer's BOS (or other prefix).")
    ] = False,
    out: Opt.Out = None,
    as_json: Opt.Json = False,
    *,
    opts: ModelOptions,
) -> None:
    """Write MODEL's massive sites, per-channel Linear input maxima and outlier tokens for other tools."""
    from massact.export import CorpusInputs, ExportConfig, run

    config = ExportConfig(
        formats=tuple(formats),
        samples=samples,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        thresholds=detection.thresholds(),
        add_special_tokens=not no_special_tokens,
        blocks_path=opts.blocks,
        progress=not as_json,
    )
    if out is None and not as_json:
        raise MassactError("give --out DIR (the directory the export files go to) or --json")
    inputs = CorpusInputs.read(corpus)  # a bad corpus fails before the model loads
    emit_result(run(opts.load(model, batch=batch_size, tokens=seq_len), inputs, config), out, as_json)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
