"""`massact rewrite`: an exactly equivalent model with float16 headroom, smoothed or rotated, saved for any tool."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, emit_result, install_help, model_command
from massact.errors import MassactError
from massact.rewrite.config import CHECK_QUANT_BLOCKS, RewriteConfig, parse_rescale
from massact.rewrite.folder import check_model_folder


@model_command
def rewrite_command(
    model: Opt.Model = "default",
    rescale: Annotated[
        str | None,
        typer.Option(
            "--rescale", help="Scale the residual stream: auto (fit under --headroom of float16) or a factor."
        ),
    ] = None,
    headroom: Annotated[
        float, typer.Option("--headroom", help="auto: largest module output at most this fraction of 65,504.")
    ] = 0.5,
    smooth: Annotated[
        float | None, typer.Option("--smooth", help="SmoothQuant alpha, folded into the norms and the Linears.")
    ] = None,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Fold an orthogonal rotation into an RMSNorm model.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the rotation and of the windows.")] = 0,
    check_quant: Annotated[
        str | None,
        typer.Option(
            "--check-quant", help=f"w8a8: quantize both models with optimum-quanto ({install_help('quant')})."
        ),
    ] = None,
    corpus: Annotated[
        str, typer.Option("--corpus", help="Corpus name or path (.txt, folder, .jsonl).")
    ] = "shakespeare",
    samples: Annotated[
        int, typer.Option("--samples", help="Held-out windows the float32 and float16 checks run on.")
    ] = 2,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")] = 256,
    calib_samples: Annotated[
        int, typer.Option("--calib-samples", help="Further windows that set the factor and the scales.")
    ] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 4,
    out: Opt.Out = None,
    as_json: Opt.Json = False,
    *,
    opts: ModelOptions,
) -> None:
    """Rewrite MODEL exactly (rescale, smooth, rotate) and save it as a plain transformers model in --out."""
    if out is None:
        raise MassactError("give --out DIR: the folder the rewritten model is saved in")
    config = RewriteConfig(
        rescale=parse_rescale(rescale),
        headroom=headroom,
        smooth=smooth,
        rotate=rotate,
        seed=seed,
        check_quant=check_quant,
        batch_size=batch_size,
        blocks_path=opts.blocks,
        progress=not as_json,
    )
    check_model_folder(out)
    if check_quant is not None and opts.offload == "blocks":
        raise MassactError(CHECK_QUANT_BLOCKS)
    from massact.quant.run import check_counts

    check_counts(samples, seq_len, calib_samples)
    if opts.dtype not in ("auto", "float32", "fp32"):
        raise MassactError(
            f"--dtype {opts.dtype}: rewrite the float32 model (--dtype float32); it checks float16 itself"
        )
    from massact.data.corpus import load_texts
    from massact.quant import load_inputs
    from massact.rewrite import run

    load_texts(corpus)  # a bad corpus costs nothing
    float32 = replace(opts, dtype="float32")  # --dtype auto too: the rewrite is made on the float32 model
    loaded = float32.load(model, batch=batch_size, tokens=seq_len)
    inputs = load_inputs(loaded, corpus, samples, seq_len, calib_samples, seed)
    result = replace(run(loaded, inputs, config), argument=model, out=str(out))
    emit_result(result, out, as_json)


def register(app: typer.Typer) -> None:
    app.command("rewrite")(rewrite_command)
