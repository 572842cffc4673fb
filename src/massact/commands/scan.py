"""`massact scan`: locate massive activations on a prompt (or a corpus, or images)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from massact.commands.common import (
    BlocksOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ModelArg,
    OutOpt,
    TrustOpt,
    load_for_cli,
    read_prompt,
)
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.outputs import check_output_dir, staged_output, to_json_text
from massact.report.scan_report import terminal_summary, write_scan_outputs
from massact.scan import DEFAULT_PROMPT, scan


def scan_command(
    model: ModelArg = "default",
    prompt: Annotated[str | None, typer.Option("--prompt", help="Text to scan.")] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="Read the prompt from a UTF-8 file.")] = None,
    no_special_tokens: Annotated[
        bool, typer.Option("--no-special-tokens", help="Tokenize without BOS/EOS and other special tokens.")
    ] = False,
    abs_threshold: Annotated[float, typer.Option("--abs-threshold", help="Minimum |x| of a massive activation.")] = 100.0,
    ratio_threshold: Annotated[
        float, typer.Option("--ratio-threshold", help="Minimum |x| / block median of a massive activation.")
    ] = 1000.0,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Largest activations kept per block.")] = 16,
    keep: Annotated[
        int | None, typer.Option("--keep", help="Keep this block's output for the 3D figure (default: first massive).")
    ] = None,
    out: OutOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON on stdout.")] = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    blocks: BlocksOpt = None,
) -> None:
    """Find the massive activations of MODEL: blocks, dims, tokens, values, ratio to the median."""
    thresholds = Thresholds(abs=abs_threshold, ratio=ratio_threshold)
    text = read_prompt(prompt, text_file, DEFAULT_PROMPT)
    if not text.strip():
        raise MassactError("the prompt is empty; give --prompt TEXT (or --text-file PATH) with some text")
    if out is not None:
        check_output_dir(out)
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    result = scan(
        loaded,
        text,
        thresholds=thresholds,
        top_k=top_k,
        keep=keep,
        keep_first_massive=out is not None,
        add_special_tokens=not no_special_tokens,
        blocks_path=blocks,
    )
    if as_json:
        typer.echo(to_json_text(result.to_json()))
    else:
        terminal_summary(result, Console())
    if out is not None:
        with staged_output(out) as staging:
            write_scan_outputs(result, staging)
        if not as_json:
            Console(stderr=True).print(f"wrote {out}/scan.json, report.md and figures")


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)
