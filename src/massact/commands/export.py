"""`massact export`: massive sites, activation scales and outlier tokens, as files other tools read."""

from __future__ import annotations

from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, emit_result, model_command
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
    abs_threshold: Opt.AbsThreshold = 100.0,
    ratio_threshold: Opt.RatioThreshold = 1000.0,
    no_special_tokens: Annotated[
        bool, typer.Option("--no-special-tokens", help="Windows without the tokenizer's BOS (or other prefix).")
    ] = False,
    out: Opt.Out = None,
    as_json: Opt.Json = False,
    *,
    opts: ModelOptions,
) -> None:
    """Write MODEL's massive sites, per-channel Linear input maxima and outlier tokens for other tools."""
    from massact.data.corpus import load_texts, prefix_tokens, token_windows
    from massact.detect import Thresholds
    from massact.quant.export import ExportFiles, measure_exports, parse_formats

    chosen = parse_formats(formats)
    thresholds = Thresholds(abs=abs_threshold, ratio=ratio_threshold)
    for flag, value in (("--samples", samples), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if value < 1:
            raise MassactError(f"{flag} {value}: must be at least 1")
    if out is None and not as_json:
        raise MassactError("give --out DIR (the directory the export files go to) or --json")
    texts = load_texts(corpus)  # a bad corpus fails before the model loads
    loaded = opts.load(model)
    limit = loaded.context_length
    if limit is not None and seq_len > limit:
        raise MassactError(f"--seq-len {seq_len} is longer than the model's context ({limit} tokens); lower --seq-len")
    add_special_tokens = not no_special_tokens
    windows = token_windows(loaded.tokenizer, texts, samples, seq_len, seed, add_special_tokens=add_special_tokens)
    result = measure_exports(
        loaded,
        windows,
        corpus=corpus,
        seed=seed,
        batch_size=batch_size,
        thresholds=thresholds,
        act_scales="act-scales" in chosen,
        recipe="recipe" in chosen,
        imatrix="imatrix" in chosen,
        blocks_path=opts.blocks,
        progress=not as_json,
        prefix_tokens=prefix_tokens(loaded.tokenizer, add_special_tokens),
    )
    emit_result(ExportFiles(result, chosen), out, as_json)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
