"""`massact vit`: vision-transformer tools (Fix-Reg-Mean, a labelled folder of sample photos)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from massact.commands.common import (
    BlocksOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelArg,
    OutOpt,
    TrustOpt,
    load_for_cli,
)
from massact.errors import MassactError
from massact.outputs import check_output_dir, staged_output, to_json_text, write_json

vit_app = typer.Typer(help="Vision transformers: register tokens, Fix-Reg-Mean, sample photos.", no_args_is_help=True)

COLUMNS = (
    ("top1", "top-1"),
    ("prediction_agreement", "agrees w/ original"),
    ("relative_logit_change", "rel. logit change"),
    ("feature_cosine", "feature cosine"),
    ("knn_accuracy", "k-NN acc"),
    ("knn_agreement", "k-NN agrees w/ original"),
)


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    return [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    return f"{value:.4f}" if key in ("relative_logit_change", "feature_cosine") else f"{100 * value:.1f}"


def markdown_table(data: dict) -> str:
    """The result as a Markdown table like the paper's (percentages, cosine and logit change as fractions)."""
    columns = _columns(data["settings"])
    lines = [
        f"# Fix-Reg-Mean: {data['model']}",
        "",
        f"- {data['num_registers']} register tokens replaced at all {data['num_blocks']} blocks by their mean "
        f"over {data['mean_images']} images; evaluated on {data['eval_images']} images (k-NN: k={data['k']})",
        "",
        "| setting | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [
        "| " + row["setting"] + " | " + " | ".join(_cell(row, k) for k, _ in columns) + " |" for row in data["settings"]
    ]
    if data["note"]:
        lines += ["", f"Note: {data['note']}."]
    return "\n".join(lines) + "\n"


@vit_app.command("fix-reg-mean")
def fix_reg_mean_command(
    model: ModelArg,
    images: Annotated[str, typer.Option("--images", help="Images whose register means are collected (or 'samples').")],
    eval_images: Annotated[
        str | None,
        typer.Option("--eval", help="Images to evaluate on; a labelled folder gives accuracies (default: --images)."),
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", min=1, help="Use at most this many images for the means.")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours for the k-NN label agreement.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
    out: OutOpt = None,
    as_json: JsonOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    blocks: BlocksOpt = None,
) -> None:
    """Replace every block's register features by their mean over --images; compare on --eval."""
    from massact.vision.fix_reg_mean import fix_reg_mean
    from massact.vision.images import find_images

    mean_set = find_images(images).spread(samples)
    eval_set = find_images(eval_images) if eval_images is not None else find_images(images)
    if out is not None:
        check_output_dir(out)
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    result, means = fix_reg_mean(loaded, mean_set, eval_set, k=k, batch_size=batch_size, blocks_path=blocks)
    data = result.to_json()
    if as_json:
        typer.echo(to_json_text(data))
    else:
        columns = _columns(data["settings"])
        table = Table(title=f"Fix-Reg-Mean: {result.model} ({result.num_registers} registers)", title_justify="left")
        table.add_column("setting")
        for _, title in columns:
            table.add_column(title, justify="right")
        for row in data["settings"]:
            table.add_row(row["setting"], *(_cell(row, key) for key, _ in columns))
        console = Console()
        console.print(table)
        if result.note:
            console.print(f"Note: {result.note}.")
    if out is not None:
        from safetensors.torch import save_file

        with staged_output(out) as staging:
            write_json(staging / "fix_reg_mean.json", data)
            save_file(
                {"means": means.means.contiguous()},
                str(staging / "register_means.safetensors"),
                metadata={"positions": ",".join(map(str, means.positions)), "images": str(means.num_images)},
            )
            (staging / "report.md").write_text(markdown_table(data), encoding="utf-8")
        if not as_json:
            Console(stderr=True).print(f"wrote {out}/fix_reg_mean.json, register_means.safetensors and report.md")


@vit_app.command("samples")
def samples_command(
    out: Annotated[Path, typer.Argument(help="Folder to write: one sub-folder (class) per bundled photo.")],
    crops: Annotated[int, typer.Option("--crops", min=2, help="Random crops per photo (seeded).")] = 6,
) -> None:
    """Write a labelled folder of crops of the photos bundled with scikit-image (no download)."""
    from massact.vision.images import write_sample_folder

    check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise MassactError(f"{out}: folder is not empty; give a new folder")
    with staged_output(out) as staging:
        image_set = write_sample_folder(staging, crops=crops)
    Console(stderr=True).print(f"wrote {len(image_set)} images in {len(image_set.classes)} classes to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(vit_app, name="vit")
