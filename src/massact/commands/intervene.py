"""`massact intervene`: perplexity with the massive activations zeroed, set to their mean, or a random control."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, TaskOptions, ThresholdOptions, emit_result, model_command
from massact.defaults import MODES
from massact.errors import MassactError


@model_command
def intervene_command(
    model: Opt.Model = "default",
    corpus: Annotated[
        str, typer.Option("--corpus", help="Comma-separated corpora (names, .txt, folders, .jsonl).")
    ] = "shakespeare",
    samples: Annotated[int, typer.Option("--samples", help="Windows evaluated per corpus.")] = 16,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window, the tokenizer's BOS included.")] = 512,
    no_special_tokens: Annotated[
        bool, typer.Option("--no-special-tokens", help="Windows of text tokens only, without the tokenizer's BOS.")
    ] = False,
    block: Annotated[
        str | None,
        typer.Option(
            "--block", help="L, or L- for blocks L..last (default: where the largest massive activation first appears)."
        ),
    ] = None,
    modes: Annotated[str, typer.Option("--modes", help=f"Comma-separated, from {','.join(MODES)}.")] = ",".join(MODES),
    tasks: TaskOptions = TaskOptions(),
    means: Annotated[
        Path | None, typer.Option("--means", help="means.json of a corpus scan for the mean mode.")
    ] = None,
    means_samples: Annotated[
        int, typer.Option("--means-samples", help="Held-out windows for the means, when no --means file.")
    ] = 32,
    dims: Annotated[str | None, typer.Option("--dims", help="Only these dims (comma-separated).")] = None,
    tokens: Annotated[
        str | None,
        typer.Option("--tokens", help="Only these token positions (comma-separated; 0 is the BOS when there is one)."),
    ] = None,
    detection: ThresholdOptions = ThresholdOptions(),
    seed: Annotated[int, typer.Option("--seed", help="Seed for the windows and the random control.")] = 0,
    seeds: Opt.Seeds = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 8,
    out: Opt.Out = None,
    as_json: Opt.Json = False,
    *,
    opts: ModelOptions,
) -> None:
    """Perplexity of MODEL with its massive activations zeroed, set to their mean, or a random control zeroed."""
    from massact.data.corpus import load_texts
    from massact.interventions import InterventionConfig, SiteSpec, parse_ints, parse_modes, read_means, run
    from massact.interventions.run import TASKS_BLOCKWISE_REFUSAL

    if tasks.tasks and opts.offload == "blocks":  # before the tasks' data is fetched
        raise MassactError(TASKS_BLOCKWISE_REFUSAL)
    config = InterventionConfig(
        tasks=tasks.config(batch_size),  # bad tasks fail before the model loads
        corpora=tuple(corpus.split(",")),
        samples=samples,
        seq_len=seq_len,
        block=block,
        modes=tuple(parse_modes(modes)),
        sites=SiteSpec(
            thresholds=detection.thresholds(),
            dims=parse_ints(dims, "dims"),
            tokens=parse_ints(tokens, "tokens"),
        ),
        means=read_means(means) if means is not None else None,
        means_samples=means_samples,
        seed=seed,
        seeds=seeds,
        batch_size=batch_size,
        add_special_tokens=not no_special_tokens,
        blocks_path=opts.blocks,
    )
    texts = {name: load_texts(name) for name in config.corpora}  # an unknown or unreadable corpus fails here
    loaded = opts.load(model, batch=batch_size, tokens=seq_len)
    result = run(loaded, texts, config)
    result.command = shlex.join(["massact", *sys.argv[1:]])
    emit_result(result, out, as_json)


def register(app: typer.Typer) -> None:
    app.command("intervene")(intervene_command)
