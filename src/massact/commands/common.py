"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from massact.errors import MassactError
from massact.models.loading import LoadedModel, load_model
from massact.outputs import staged_output, to_json_text

ModelArg = Annotated[
    str,
    typer.Argument(help="'default' (bundled SmolLM2-135M-Instruct), a .gguf file, a model directory or a hub id."),
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16.")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available).")]
DeviceMapOpt = Annotated[
    str | None, typer.Option("--device-map", help="'auto' spreads a large model over devices with accelerate.")
]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the hub (off by default).")]
BlocksOpt = Annotated[
    str | None, typer.Option("--blocks", help="Dotted path of the model's list of blocks, when not found by itself.")
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Directory for JSON, figures and report.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only the JSON on stdout.")]
AbsThresholdOpt = Annotated[float, typer.Option("--abs-threshold", help="Minimum |x| of a massive activation.")]
RatioThresholdOpt = Annotated[
    float, typer.Option("--ratio-threshold", help="Minimum |x| / block median of a massive activation.")
]

console = Console(stderr=True)


def load_for_cli(
    model: str, dtype: str, device: str | None, device_map: str | None, trust_remote_code: bool
) -> LoadedModel:
    """Load a model for a command, with a status line while it loads."""
    with console.status(f"loading {model} ..."):
        return load_model(model, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code)


def read_prompt(prompt: str | None, text_file: Path | None, default: str) -> str:
    """The prompt from --prompt or --text-file (not both), else `default`."""
    if prompt is not None and text_file is not None:
        raise MassactError("give --prompt or --text-file, not both")
    if text_file is not None:
        if not text_file.is_file():
            raise MassactError(f"--text-file {text_file}: no such file")
        try:
            return text_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MassactError(f"--text-file {text_file}: not UTF-8 text") from None
    return default if prompt is None else prompt


def emit(
    data: Callable[[], dict],
    as_json: bool,
    show: Callable[[Console], None],
    out: Path | None,
    write: Callable[[Path], object],
    written: str,
) -> None:
    """Print the JSON (with --json) or the human view, then write every file into `out`, all or none."""
    if as_json:
        typer.echo(to_json_text(data()))
    else:
        show(Console())
    if out is not None:
        with staged_output(out) as staging:
            write(staging)
        if not as_json:
            console.print(f"wrote {out}/{written}")
