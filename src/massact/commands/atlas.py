"""`massact atlas`: many models side by side, one row each."""

from __future__ import annotations

from typing import Annotated

import typer

from massact.commands.common import (
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    OffloadOpt,
    Opt,
    ThresholdOptions,
    TrustOpt,
    emit_result,
    model_command,
)
from massact.defaults import ATLAS_STEPS as STEPS
from massact.defaults import DEFAULT_CORPUS, DEFAULT_PROMPT


@model_command
def atlas_command(
    models: Annotated[list[str], typer.Argument(help="Models: 'default', .gguf files, model directories or hub ids.")],
    corpus: Annotated[
        str, typer.Option("--corpus", help="Corpus of the constancy and W8A8 windows (shakespeare works offline).")
    ] = DEFAULT_CORPUS,
    samples: Annotated[int, typer.Option("--samples", help="Corpus windows per model.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per corpus window.")] = 128,
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt of the scan, trace and attention steps.")] = (
        DEFAULT_PROMPT
    ),
    steps: Annotated[
        str, typer.Option("--steps", help=f"Comma-separated analyses to run: {','.join(STEPS)}.")
    ] = ",".join(STEPS),
    detection: ThresholdOptions = ThresholdOptions(),
    out: Opt.Out = None,
    as_json: Opt.Json = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    trust_remote_code: TrustOpt = False,
    offload: OffloadOpt = "auto",
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Analyse each MODEL (scan, corpus constancy, super weights, sinks, headroom, W8A8) into one table.

    A model that fails to load is a row with the reason. With --out, each model's runs are kept in its
    own folder and a rerun skips the models already finished.
    """
    import massact.atlas
    from massact.atlas import AtlasConfig

    config = AtlasConfig(
        prompt=prompt,
        corpus=corpus,
        samples=samples,
        seq_len=seq_len,
        thresholds=detection.thresholds(),
        steps=tuple(s.strip() for s in steps.split(",") if s.strip()),
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        offload=offload,
        max_memory=max_memory,
    )
    result = massact.atlas.run(models, out, config)  # --out keeps each finished model: a rerun reuses it
    result.check_analysed()
    emit_result(result, out, as_json)


def register(app: typer.Typer) -> None:
    app.command("atlas")(atlas_command)
