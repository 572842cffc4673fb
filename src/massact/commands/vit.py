"""`massact vit`: vision-transformer tools (Fix-Reg-Mean, a labelled folder of sample photos)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import ModelOptions, Opt, emit_result, install_help, model_command
from massact.progress import say

vit_app = typer.Typer(help="Vision transformers: register tokens, Fix-Reg-Mean, sample photos.", no_args_is_help=True)

VisionModelArg = Annotated[
    str,
    typer.Argument(
        help="A vision transformer with register tokens: a model directory or a hub id "
        "(e.g. DINOv2 with registers, a timm *_reg4_* model)."
    ),
]


@vit_app.command("fix-reg-mean")
@model_command
def fix_reg_mean_command(
    model: VisionModelArg,
    images: Annotated[
        str,
        typer.Option(
            "--images",
            help=f"Images whose register means are collected (or 'samples': {install_help('vision')}).",
        ),
    ],
    eval_images: Annotated[
        str | None,
        typer.Option("--eval", help="Images to evaluate on; a labelled folder gives accuracies (default: --images)."),
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", min=1, help="Use at most this many images for the means.")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours for the k-NN label agreement.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for fix_reg_mean.json, register_means.safetensors and report.md."),
    ] = None,
    as_json: Opt.Json = False,
    *,
    opts: ModelOptions,
) -> None:
    """Replace every block's register features by their mean over --images; compare on --eval."""
    from massact.vision import FixRegMeanConfig, find_images, run_fix_reg_mean

    config = FixRegMeanConfig(k=k, batch_size=batch_size, samples=samples, blocks_path=opts.blocks)
    mean_set = find_images(images)
    eval_set = find_images(eval_images, "eval_images") if eval_images is not None else mean_set
    result = run_fix_reg_mean(opts.load(model), (mean_set, eval_set), config)
    emit_result(result, out, as_json)


@vit_app.command(
    "samples",
    help="Write a labelled folder of crops of the photos bundled with scikit-image (no download; "
    f"{install_help('vision')}).",
)
def samples_command(
    out: Annotated[Path, typer.Argument(help="Folder to write: one sub-folder (class) per bundled photo.")],
    crops: Annotated[int, typer.Option("--crops", min=2, help="Random crops per photo (seeded).")] = 6,
    as_json: Opt.Json = False,
) -> None:
    """Write a labelled folder of crops of the photos bundled with scikit-image."""
    from massact.outputs import to_json_text
    from massact.vision.samples import write_samples

    written = write_samples(out, crops)
    if as_json:
        typer.echo(to_json_text(written))
    else:
        say(f"wrote {len(written['images'])} images in {len(written['classes'])} classes to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(vit_app, name="vit")
