"""`massact quant`: perplexity under simulated quantization, with the fixes massact's findings suggest."""

from __future__ import annotations

from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, TaskOptions, ThresholdOptions, emit_result, model_command
from massact.defaults import DEFAULT_SCHEMES, DEFAULT_STRATEGIES


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@model_command
def quant_command(
    model: Opt.Model = "default",
    corpus: Annotated[
        str, typer.Option("--corpus", help="Corpus name or path (.txt, folder, .jsonl).")
    ] = "shakespeare",
    samples: Annotated[int, typer.Option("--samples", help="Windows to evaluate.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")] = 512,
    calib_samples: Annotated[
        int, typer.Option("--calib-samples", help="Further held-out windows the strategies learn from.")
    ] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed that draws the windows (0, as in every command).")] = 0,
    seeds: Opt.Seeds = 1,
    schemes: Annotated[
        str,
        typer.Option(
            "--schemes",
            help="Comma-separated: W8, W4g128, W8A8 (per-tensor), W8A8-static, W8A8-token, W4A8, W4A4, KV8, KV4, ...",
        ),
    ] = ",".join(DEFAULT_SCHEMES),
    strategies: Annotated[
        str,
        typer.Option(
            "--strategies",
            help="Comma-separated: none, outlier-tokens, smooth, rotate, keep-super-weights, a+b combinations, best.",
        ),
    ] = ",".join(DEFAULT_STRATEGIES),
    tasks: TaskOptions = TaskOptions(),
    alpha: Annotated[float, typer.Option("--alpha", help="Smoothing strength of `smooth`.")] = 0.5,
    super_weights: Annotated[
        int, typer.Option("--super-weights", help="Top traced entries per site that keep-super-weights may keep.")
    ] = 4,
    sensitivity: Annotated[
        str, typer.Option("--sensitivity", help="Scheme for the per-block sensitivity, or 'none' to skip it.")
    ] = "W8A8",
    sensitivity_samples: Annotated[
        int, typer.Option("--sensitivity-samples", help="Evaluated windows the sensitivity uses.")
    ] = 2,
    best_samples: Annotated[
        int, typer.Option("--best-samples", help="Calibration windows on which `best` compares strategies.")
    ] = 2,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Windows per forward pass (one per-tensor activation scale spans them).")
    ] = 4,
    detection: ThresholdOptions = ThresholdOptions(),
    out: Opt.Out = None,
    as_json: Opt.Json = False,
    *,
    opts: ModelOptions,
) -> None:
    """What quantization costs MODEL's perplexity, and which strategy recovers it."""
    from massact.quant import QuantConfig, check_counts, load_inputs, run

    config = QuantConfig(
        schemes=_names(schemes),
        strategies=_names(strategies),
        alpha=alpha,
        super_weights=super_weights,
        sensitivity=None if sensitivity.strip().lower() in ("", "none") else sensitivity,
        sensitivity_samples=sensitivity_samples,
        best_samples=best_samples,
        batch_size=batch_size,
        thresholds=detection.thresholds(),
        blocks_path=opts.blocks,
        progress=not as_json,
        tasks=tasks.config(batch_size),  # bad tasks fail before the model loads
    )
    check_counts(samples, seq_len, calib_samples, seeds)
    loaded = opts.load(model, batch=batch_size, tokens=seq_len)
    emit_result(
        run(loaded, load_inputs(loaded, corpus, samples, seq_len, calib_samples, seed, seeds), config), out, as_json
    )


def register(app: typer.Typer) -> None:
    app.command("quant")(quant_command)
