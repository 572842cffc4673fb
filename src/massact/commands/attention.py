"""`massact attention`: attention sinks on the massive-activation tokens and the implicit attention bias."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    JsonOpt,
    ModelArg,
    OutOpt,
    RatioThresholdOpt,
    TrustOpt,
    console,
    emit,
    load_for_cli,
    read_prompt,
)
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.structure import find_structure
from massact.outputs import check_output_dir, write_json

PAPER_PROMPT = (
    "The following are multiple choice questions (with answers) about machine learning.\n\n"
    " A 6-sided die is rolled 15 times and the results are: side 1 comes up 0 times;"
)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def attention_table(result, console: Console) -> None:
    """One row per block: sink heads, first-token importance, mass on C, C-part constancy, replacement effect."""
    rows = result.block_summary()
    sinks = ", ".join(str(s) for s in result.sequences[0].sinks) or "none"
    title = (
        f"{result.model}: attention per block ({len(result.sequences)} sequence(s); massive tokens C = {sinks}; "
        f"massive from block {result.first_massive_block})"
    )
    caption = (
        f"sink: fraction of heads whose first-token importance > {result.options.threshold}; imp 1st: mean over heads "
        "of the first token's importance; mass C: attention mass on C; C cos / C var / C share: the C part of the "
        "output (all heads) - cosine to its mean over queries, relative variance, share of the output norm; "
        "Δ mean / Δ zero: |block output change| / |block update| with the C part replaced by its mean / removed"
    )
    table = Table(title=title, caption=caption)
    for name in ("block", "sink", "imp 1st", "mass C", "C cos", "C var", "C share", "Δ mean", "Δ zero"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            str(r["index"]),
            f"{r['sink_fraction']:.2f}",
            _fmt(r["first_token_importance"]),
            _fmt(r["massive_mass"]),
            _fmt(r["block_c_cosine"]),
            _fmt(r["block_c_relvar"]),
            _fmt(r["block_c_share"]),
            _fmt(r["replace_mean_change"]),
            _fmt(r["replace_zero_change"]),
        )
    console.print(table)


def write_attention_outputs(result, out: Path) -> None:
    from massact.attention.figures import plot_attention_map, plot_constancy, plot_sinks

    rows = result.block_summary()
    data = result.to_json()
    write_json(out / "attention.json", data)
    first = result.sequences[0]
    block = result.heatmap_block
    if first.heatmap is not None:
        title = f"{result.model}: block {block}, attention probabilities (mean over heads)"
        plot_attention_map(first.heatmap, result.tokens, out / f"attention_block{block}.png", title)
    if first.heatmap_logits is not None:
        title = f"{result.model}: block {block}, attention logits (mean over heads)"
        plot_attention_map(
            first.heatmap_logits, result.tokens, out / f"attention_logits_block{block}.png", title, "logit"
        )
    fm = result.first_massive_block
    plot_sinks(rows, out / "attention_sinks.png", f"{result.model}: attention sinks per block", fm)
    plot_constancy(rows, out / "attention_bias.png", f"{result.model}: the massive tokens' attention output", fm)


@contextmanager
def _quiet() -> Iterator[None]:
    yield


def _parse_tokens(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MassactError(f"--tokens {text!r}: give token positions separated by commas, e.g. 0,5") from None


def attention_command(
    model: ModelArg = "default",
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
        str | None, typer.Option("--tokens", help="Positions of the tokens C (default: massive-activation tokens).")
    ] = None,
    logits: Annotated[bool, typer.Option("--logits", help="Also plot the pre-softmax attention logits.")] = False,
    intervene: Annotated[
        bool, typer.Option("--intervene/--no-intervene", help="Measure replacing the C part by its mean.")
    ] = True,
    display_tokens: Annotated[int, typer.Option("--display-tokens", min=2, help="Tokens shown in the heatmap.")] = 64,
    no_special_tokens: Annotated[
        bool, typer.Option("--no-special-tokens", help="Tokenize the prompt without special tokens.")
    ] = False,
    abs_threshold: AbsThresholdOpt = 100.0,
    ratio_threshold: RatioThresholdOpt = 1000.0,
    out: OutOpt = None,
    as_json: JsonOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    blocks: BlocksOpt = None,
) -> None:
    """Per block and head: attention sinks on the massive-activation tokens and how constant their contribution is."""
    from massact.attention import AttentionOptions, analyze
    from massact.scan import tokenize_prompt

    if corpus is not None and (prompt is not None or text_file is not None):
        raise MassactError("give --prompt/--text-file or --corpus, not both")
    if not 0 < threshold < 1:
        raise MassactError(f"--threshold {threshold}: the sink threshold is a probability in (0, 1)")
    thresholds = Thresholds(abs=abs_threshold, ratio=ratio_threshold)
    text = None if corpus is not None else read_prompt(prompt, text_file, PAPER_PROMPT)
    if out is not None:
        check_output_dir(out)
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    structure = find_structure(loaded.model, blocks)
    options = AttentionOptions(
        threshold=threshold,
        block=block,
        logits=logits,
        intervene=intervene,
        display_tokens=display_tokens,
        thresholds=thresholds,
        sinks=_parse_tokens(tokens),
    )
    if corpus is not None:
        from massact.data.corpus import load_windows

        if loaded.context_length is not None and seq_len > loaded.context_length:
            raise MassactError(f"--seq-len {seq_len}: the model takes at most {loaded.context_length} tokens")
        ids = load_windows(loaded.tokenizer, corpus=corpus, samples=samples, seq_len=seq_len, seed=seed)
        strings = [loaded.tokenizer.decode([i]) for i in ids[0].tolist()]
        source = {"corpus": corpus, "samples": samples, "seq_len": seq_len, "seed": seed}
    else:
        encoded = tokenize_prompt(loaded, text, add_special_tokens=not no_special_tokens)
        ids, strings = encoded.input_ids, encoded.tokens
        source = {"prompt": text, "add_special_tokens": not no_special_tokens}
    with (
        console.status(f"measuring attention on {ids.shape[-1]} tokens ...")
        if ids.dim() == 1 or len(ids) == 1
        else _quiet()
    ):
        result = analyze(
            loaded.model, structure, ids, options, name=loaded.name, tokens=strings, source=source, progress=True
        )
    emit(
        result.to_json,
        as_json,
        lambda console: attention_table(result, console),
        out,
        lambda staging: write_attention_outputs(result, staging),
        "attention.json and figures",
    )


def register(app: typer.Typer) -> None:
    app.command("attention")(attention_command)
