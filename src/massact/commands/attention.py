"""`massact attention`: attention sinks on the massive-activation tokens and the implicit attention bias."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, ThresholdOptions, emit_result, model_command, read_prompt
from massact.defaults import PAPER_PROMPT
from massact.errors import MassactError
from massact.progress import status


def _parse_tokens(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MassactError(f"--tokens {text!r}: give token positions separated by commas, e.g. 0,5") from None


@model_command
def attention_command(
    model: Opt.Model = "default",
    block: Annotated[
        int | None, typer.Option("--block", help="Block of the heatmap (default: first block after massive ones).")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Text to analyse (default: the paper's prompt).")
    ] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="Read the prompt from a UTF-8 file.")] = None,
    corpus: Annotated[
        str | None, typer.Option("--corpus", help="Corpus name (e.g. shakespeare) or path instead of a prompt.")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Corpus windows.")] = 16,
    seq_len: Annotated[int, typer.Option("--seq-len", min=2, help="Tokens per corpus window.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed that picks the corpus windows.")] = 0,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Sink head: first-token importance above this.")
    ] = 0.3,
    tokens: Annotated[
        str | None,
        typer.Option(
            "--tokens", help="Positions of the tokens C, chosen by hand (default: the massive-activation tokens)."
        ),
    ] = None,
    logits: Annotated[bool, typer.Option("--logits", help="Also plot the pre-softmax attention logits.")] = False,
    intervene: Annotated[
        bool, typer.Option("--intervene/--no-intervene", help="Measure replacing the C part by its mean.")
    ] = True,
    display_tokens: Annotated[int, typer.Option("--display-tokens", min=2, help="Tokens shown in the heatmap.")] = 64,
    no_special_tokens: Annotated[
        bool,
        typer.Option("--no-special-tokens", help="Tokenize without special tokens (corpus windows: no BOS first)."),
    ] = False,
    detection: ThresholdOptions = ThresholdOptions(),
    out: Opt.Out = None,
    as_json: Opt.Json = False,
    *,
    opts: ModelOptions,
) -> None:
    """Per block and head: attention sinks on the massive-activation tokens and how constant their contribution is."""
    if corpus is not None and (prompt is not None or text_file is not None):
        raise MassactError("give --prompt/--text-file or --corpus, not both")
    from massact.attention import AttentionConfig, corpus_input, prompt_input, run
    from massact.data.corpus import load_texts

    config = AttentionConfig(
        threshold=threshold,
        block=block,
        logits=logits,
        intervene=intervene,
        display_tokens=display_tokens,
        thresholds=detection.thresholds(),
        sinks=_parse_tokens(tokens),
        blocks_path=opts.blocks,
    )
    text = None if corpus is not None else read_prompt(prompt, text_file, PAPER_PROMPT)
    texts = load_texts(corpus) if corpus is not None else None  # a bad corpus fails before the model loads
    loaded = opts.load(model, batch=1, tokens=seq_len if corpus is not None else None)  # one sequence per pass
    if corpus is not None:
        inputs = corpus_input(
            loaded, corpus, samples, seq_len, seed, add_special_tokens=not no_special_tokens, texts=texts
        )
    else:
        inputs = prompt_input(loaded, text, add_special_tokens=not no_special_tokens)
    one = len(inputs.input_ids) == 1 and loaded.offload is None  # several windows, or blocks, show progress bars
    with status(f"measuring attention on {inputs.input_ids.shape[-1]} tokens ...") if one else nullcontext():
        result = run(loaded, inputs, config)
    emit_result(result, out, as_json)


def register(app: typer.Typer) -> None:
    app.command("attention")(attention_command)
