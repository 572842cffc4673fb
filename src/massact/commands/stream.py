"""`massact stream`: perplexity of token-by-token decoding with a bounded KV cache, per eviction policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, ThresholdOptions, emit_result, model_command, read_prompt
from massact.defaults import DEFAULT_POLICIES
from massact.errors import MassactError


@model_command
def stream(
    model: Opt.Model = "default",
    corpus: Annotated[
        str | None, typer.Option("--corpus", help="Corpus name (shakespeare, wikitext, ...) or path; see --document.")
    ] = None,
    document: Annotated[int, typer.Option("--document", help="Corpus: which text of the corpus (0 = first).")] = 0,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="Stream a UTF-8 text file.")] = None,
    offset: Annotated[int, typer.Option("--offset", help="First text token of the stream.")] = 0,
    tokens: Annotated[int, typer.Option("--tokens", help="Stream length in tokens (with the tokenizer's BOS).")] = 1200,
    cache: Annotated[int, typer.Option("--cache", help="KV cache size W in tokens for bounded policies.")] = 128,
    score_from: Annotated[
        int | None, typer.Option("--score-from", help="First stream token whose prediction is scored (2 x W + 1).")
    ] = None,
    policies: Annotated[
        str,
        typer.Option(
            "--policies",
            help="Comma-separated: full, window, sinks:N, detected, recompute; add @int4/@int8 to quantize the "
            "cache, @int4+sinks to keep the sink tokens in full precision.",
        ),
    ] = ",".join(DEFAULT_POLICIES),
    positions: Annotated[
        str, typer.Option("--positions", help="original (stream positions) or cache (positions within the cache).")
    ] = "original",
    stride: Annotated[int, typer.Option("--stride", help="recompute: predictions scored per fresh forward.")] = 1,
    max_detected: Annotated[int, typer.Option("--max-detected", help="detected: most tokens kept as sinks.")] = 8,
    detection: ThresholdOptions = ThresholdOptions(),
    out: Opt.Out = None,
    json: Opt.Json = False,
    opts: ModelOptions = ModelOptions(),
) -> None:
    """Which tokens must stay in a bounded KV cache: perplexity per policy, decoding one token at a time."""
    if corpus is not None and text_file is not None:
        raise MassactError("give --corpus or --text-file, not both")
    from massact.stream import StreamConfig, check_offset, cut_stream, document_text, run

    config = StreamConfig(
        policies=policies,
        cache=cache,
        score_from=score_from,
        positions=positions,
        stride=stride,
        max_detected=max_detected,
        thresholds=detection.thresholds(),
        blocks_path=opts.blocks,
    )
    config.check_tokens(tokens)
    if opts.offload == "blocks":
        from massact.stream.run import BLOCKWISE_REFUSAL

        raise MassactError(BLOCKWISE_REFUSAL)
    if text_file is not None:
        text, source = read_prompt(None, text_file, ""), str(text_file)
    else:
        text, source = document_text(corpus or "shakespeare", document)
    check_offset(text, offset, source)
    loaded = opts.load(model)
    emit_result(run(loaded, cut_stream(loaded.tokenizer, text, offset, tokens, source), config), out, json)


def register(app: typer.Typer) -> None:
    app.command("stream")(stream)
