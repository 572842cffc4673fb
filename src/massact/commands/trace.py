"""`massact trace`: which sub-layer, expert and weight entries write each massive activation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, ThresholdOptions, emit_result, model_command, read_prompt
from massact.defaults import DEFAULT_CORPUS, DEFAULT_PROMPT
from massact.validate import check_prompt


@model_command
def trace_command(
    model: Opt.Model = "default",
    prompt: Annotated[str | None, typer.Option("--prompt", help="Text whose massive sites are traced.")] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="Read the prompt from a UTF-8 file.")] = None,
    no_special_tokens: Annotated[
        bool, typer.Option("--no-special-tokens", help="Tokenize the prompt and the windows without BOS/EOS.")
    ] = False,
    token: Annotated[int | None, typer.Option("--token", help="Trace the sites on this token position.")] = None,
    dim: Annotated[int | None, typer.Option("--dim", help="Trace this feature dim, massive or not.")] = None,
    block: Annotated[
        int | None, typer.Option("--block", help="Trace the update of this block (default: the largest jump).")
    ] = None,
    max_sites: Annotated[int, typer.Option("--max-sites", help="Trace at most this many sites.")] = 4,
    top: Annotated[int, typer.Option("--top", help="Weight entries listed per site.")] = 10,
    share: Annotated[
        float, typer.Option("--share", help="Report how many entries explain this share of the jump.")
    ] = 0.9,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Zero the entries, measure, restore (needs a corpus).")
    ] = True,
    risk: Annotated[
        bool, typer.Option("--risk/--no-risk", help="Measure the int8 quantization risk of each block output.")
    ] = True,
    corpus: Annotated[
        str, typer.Option("--corpus", help="Corpus for perplexity and the quantization table.")
    ] = DEFAULT_CORPUS,
    samples: Annotated[int, typer.Option("--samples", help="Corpus windows.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window, the tokenizer's BOS included.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the windows and the control entries.")] = 0,
    detection: ThresholdOptions = ThresholdOptions(),
    out: Opt.Out = None,
    as_json: Opt.Json = False,
    opts: ModelOptions = ModelOptions(),
) -> None:
    """Trace each massive activation of MODEL to the sub-layer, expert and weight entries that write it, and verify."""
    from massact.trace import TraceConfig, TraceInputs, run

    text = read_prompt(prompt, text_file, DEFAULT_PROMPT)
    check_prompt(text)
    config = TraceConfig(
        thresholds=detection.thresholds(),
        add_special_tokens=not no_special_tokens,
        token=token,
        dim=dim,
        block=block,
        max_sites=max_sites,
        top=top,
        share=share,
        verify=verify,
        risk=risk,
        corpus=corpus,
        samples=samples,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        blocks_path=opts.blocks,
        progress=not as_json,
    )
    inputs = TraceInputs.read(text, config)  # before the model: a bad corpus costs nothing
    result = run(opts.load(model, batch=batch_size, tokens=seq_len), inputs, config)
    emit_result(result, out, as_json)


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
