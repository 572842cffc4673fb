"""`massact export`: massive sites, activation scales and outlier tokens, as files other tools read."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

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
    load_for_cli,
)
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.export import FILES, measure_exports, parse_formats
from massact.outputs import check_output_dir, staged_output


def export_command(
    model: ModelArg = "default",
    formats: Annotated[
        list[str],
        typer.Option("--format", help="sites, act-scales, outlier-tokens or all; repeat or comma-separate."),
    ] = (),  # type: ignore[assignment]
    corpus: Annotated[
        str, typer.Option("--corpus", help="Corpus name or path (.txt, folder, .jsonl).")
    ] = "shakespeare",
    samples: Annotated[int, typer.Option("--samples", help="Corpus windows.")] = 32,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed that picks the windows.")] = 0,
    abs_threshold: AbsThresholdOpt = 100.0,
    ratio_threshold: RatioThresholdOpt = 1000.0,
    out: OutOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    blocks: BlocksOpt = None,
) -> None:
    """Write MODEL's massive sites, per-channel Linear input maxima and outlier tokens for other tools."""
    chosen = parse_formats(formats)
    thresholds = Thresholds(abs=abs_threshold, ratio=ratio_threshold)
    for flag, value in (("--samples", samples), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if value < 1:
            raise MassactError(f"{flag} {value}: must be at least 1")
    if out is None:
        raise MassactError("give --out DIR: the directory the export files go to")
    check_output_dir(out)
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    limit = loaded.context_length
    if limit is not None and seq_len > limit:
        raise MassactError(f"--seq-len {seq_len} is longer than the model's context ({limit} tokens); lower --seq-len")
    from massact.data.corpus import load_windows

    windows = load_windows(loaded.tokenizer, corpus=corpus, samples=samples, seq_len=seq_len, seed=seed)
    result = measure_exports(
        loaded,
        windows,
        corpus=corpus,
        seed=seed,
        batch_size=batch_size,
        thresholds=thresholds,
        act_scales="act-scales" in chosen,
        blocks_path=blocks,
    )
    with staged_output(out) as staging:
        result.write(staging, chosen)
    console = Console(stderr=True)
    if not result.has_massive:
        console.print(
            f"No massive activations in {samples} windows of {seq_len} tokens (|x| > {thresholds.abs:g} and "
            f">= {thresholds.ratio:g} x median): the site and token lists are empty."
        )
    else:
        sites = result.sites()
        tokens = result.outlier_tokens()["tokens"]
        console.print(
            f"{len(sites['sites'])} massive sites in dims {sites['dims']}, "
            f"blocks {sites['blocks'][0]}..{sites['blocks'][-1]}; "
            f"{len(tokens)} token ids carry them"
        )
    for name in chosen:
        console.print(f"wrote {out}/{FILES[name]}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
