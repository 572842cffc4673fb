"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.console import Console

from massact.errors import MassactError
from massact.models.loading import LoadedModel, load_model
from massact.models.structure import Structure, find_structure
from massact.outputs import check_output_dir, staged_output, to_json_text

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


@dataclass(frozen=True)
class ModelOptions:
    """How to load the model: the options every model command shares (see `model_command`)."""

    dtype: DtypeOpt = "auto"
    device: DeviceOpt = None
    device_map: DeviceMapOpt = None
    trust_remote_code: TrustOpt = False
    blocks: BlocksOpt = None

    def load(self, model: str) -> LoadedModel:
        """Load `model` with a status line while it loads."""
        return load_for_cli(model, self.dtype, self.device, self.device_map, self.trust_remote_code)

    def structure(self, loaded: LoadedModel) -> Structure:
        """The model's blocks, at `--blocks` when given."""
        return find_structure(loaded.model, self.blocks)


def model_command(fn: Callable) -> Callable:
    """Give a command the shared model options, defined once.

    `fn` declares a parameter `opts: ModelOptions`; the command gets `--dtype`, `--device`,
    `--device-map`, `--trust-remote-code` and `--blocks` in its place. When `fn` has an `out`
    parameter, that path is checked before anything runs, so an unwritable `--out` costs nothing.
    """
    signature = inspect.signature(fn, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "opts"]
    option_names = [f.name for f in fields(ModelOptions)]
    hints = inspect.get_annotations(ModelOptions, eval_str=True)
    extra = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields(ModelOptions)
    ]
    keyword_only = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

    @functools.wraps(fn)
    def command(**kwargs):
        opts = ModelOptions(**{name: kwargs.pop(name) for name in option_names})
        if kwargs.get("out") is not None:
            check_output_dir(kwargs["out"])
        return fn(**kwargs, opts=opts)

    command.__signature__ = signature.replace(parameters=keyword_only + extra)
    command.__annotations__ = {p.name: p.annotation for p in keyword_only + extra}
    del command.__wrapped__  # typer must read the new signature, not fn's
    return command


class Result(Protocol):
    """What every analysis returns: JSON for programs, a terminal view for people, files for a folder."""

    def to_json(self) -> dict: ...

    def show(self, console: Console) -> None: ...

    def write(self, out: Path) -> None: ...


def emit_result(result: Result, out: Path | None, as_json: bool) -> None:
    """Print the JSON (with --json) or the terminal view; then write the result's files into `out`, all or none."""
    if as_json:
        typer.echo(to_json_text(result.to_json()))
    else:
        result.show(Console())
    if out is not None:
        with staged_output(out) as staging:
            result.write(staging)
            names = sorted(p.name for p in staging.iterdir())
        if not as_json:
            console.print(f"wrote {out}/: {', '.join(names)}", highlight=False)


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
