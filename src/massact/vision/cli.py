"""The image branch of `massact scan` (`--images PATH`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from massact.commands.common import load_for_cli
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.outputs import check_output_dir, staged_output, to_json_text
from massact.report.scan_report import terminal_summary
from massact.vision.images import find_images
from massact.vision.report import write_image_scan_outputs
from massact.vision.scan import scan_images


def run_image_scan(
    *,
    model: str,
    images: str,
    num_images: int | None,
    prompt_given: bool,
    thresholds: Thresholds,
    top_k: int,
    keep: int | None,
    batch_size: int,
    out: Path | None,
    as_json: bool,
    dtype: str,
    device: str | None,
    device_map: str | None,
    trust_remote_code: bool,
    blocks: str | None,
) -> None:
    """Scan MODEL on the images; print the table (or JSON) and write the files under `out`."""
    if prompt_given:
        raise MassactError("give --images or --prompt/--text-file, not both")
    if batch_size < 1:
        raise MassactError(f"--batch-size {batch_size}: must be at least 1")
    image_set = find_images(images).spread(num_images)
    if out is not None:
        check_output_dir(out)
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    scan = scan_images(
        loaded,
        image_set,
        thresholds=thresholds,
        top_k=top_k,
        keep=keep,
        keep_first_massive=out is not None,
        batch_size=batch_size,
        blocks_path=blocks,
        progress=not as_json,
    )
    if as_json:
        typer.echo(to_json_text(scan.to_json()))
    else:
        console = Console()
        terminal_summary(scan.result, console)
        sites = scan.sites_over_images()
        console.print(
            f"Over {len(image_set)} images: "
            + (
                ", ".join(f"{s['token_text']} dim {s['dim']} on {s['num_images']}" for s in sites[:8])
                or "nothing flagged"
            )
        )
    if out is not None:
        with staged_output(out) as staging:
            write_image_scan_outputs(scan, staging)
        if not as_json:
            Console(stderr=True).print(f"wrote {out}/scan.json, report.md and figures")
