"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

import typer
from rich.console import Console

from massact.errors import MassactError
from massact.outputs import check_output_dir, staged_output, to_json_text
from massact.progress import console, status

if TYPE_CHECKING:  # imported where used, so that help and usage errors never wait for torch
    from massact.models.loading import LoadedModel

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
OUT_HELP = (
    "Directory for the results (made if missing). It holds one run: the files of an earlier massact run "
    "there are replaced; files massact did not write are kept."
)
OutOpt = Annotated[Path | None, typer.Option("--out", help=OUT_HELP)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only the JSON on stdout.")]
AbsThresholdOpt = Annotated[float, typer.Option("--abs-threshold", help="Minimum |x| of a massive activation.")]
RatioThresholdOpt = Annotated[
    float, typer.Option("--ratio-threshold", help="Minimum |x| / block median of a massive activation.")
]

TABLE_WIDTH = 200  # columns used for tables when stdout is not a terminal, so no number is cut


TasksOpt = Annotated[
    str | None,
    typer.Option(
        "--tasks",
        help="Zero-shot accuracy through lm-eval (pip install massact[eval]): comma-separated task names "
        "(arc_easy,piqa,...) and/or local task directories.",
    ),
]
TasksLimitOpt = Annotated[int | None, typer.Option("--tasks-limit", help="Only the first N items of each task.")]


SeedsOpt = Annotated[
    int,
    typer.Option(
        "--seeds", help="Repeat on windows drawn with seeds SEED..SEED+N-1 and report mean ± sd of every number."
    ),
]


class Opt:
    """The option types commands share, in one place: `def cmd(model: Opt.Model = "default", out: Opt.Out = None)`."""

    Model = ModelArg
    Out = OutOpt
    Json = JsonOpt
    AbsThreshold = AbsThresholdOpt
    RatioThreshold = RatioThresholdOpt
    Tasks = TasksOpt
    TasksLimit = TasksLimitOpt
    Seeds = SeedsOpt


def stdout_console() -> Console:
    """The console for a command's terminal view: the terminal's width, or wide enough under a pipe."""
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=TABLE_WIDTH)


@dataclass(frozen=True)
class ModelOptions:
    """How to load the model: the options every model command shares (see `model_command`)."""

    dtype: DtypeOpt = "auto"
    device: DeviceOpt = None
    device_map: DeviceMapOpt = None
    trust_remote_code: TrustOpt = False
    blocks: BlocksOpt = None

    def __post_init__(self) -> None:
        if self.dtype == "auto" and self.device is None:
            return  # nothing to check, and no reason to import torch
        from massact.models.loading import check_device, check_dtype

        check_dtype(self.dtype)
        if self.device is not None:
            check_device(self.device)

    def load(self, model: str) -> LoadedModel:
        """Load `model` with a status line while it loads."""
        return load_for_cli(model, self.dtype, self.device, self.device_map, self.trust_remote_code)


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
        if kwargs.get("out") is not None:
            check_output_dir(kwargs["out"])
        opts = ModelOptions(**{name: kwargs.pop(name) for name in option_names})
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
        result.show(stdout_console())
    if out is not None:
        from massact.html import write_report_html

        with staged_output(out) as staging:
            result.write(staging)
            write_report_html(staging, result)
            names = sorted(p.name for p in staging.iterdir())
        if not as_json:
            console.print(f"wrote {out}/: {', '.join(names)}", markup=False, soft_wrap=True)


def load_for_cli(
    model: str, dtype: str, device: str | None, device_map: str | None, trust_remote_code: bool
) -> LoadedModel:
    """Load a model for a command, with a status line while it loads."""
    from massact.models.loading import load_model

    with status(f"loading {model} ..."):
        return load_model(model, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code)


def read_prompt(prompt: str | None, text_file: Path | None, default: str) -> str:
    """The prompt from --prompt or --text-file (not both), else `default`."""
    if prompt is not None and text_file is not None:
        raise MassactError("give --prompt or --text-file, not both")
    if text_file is not None:
        if text_file.is_dir():
            raise MassactError(f"--text-file {text_file}: a directory, not a file; give a UTF-8 text file")
        if not text_file.is_file():
            raise MassactError(f"--text-file {text_file}: no such file")
        try:
            text = text_file.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the text
        except UnicodeDecodeError:
            raise MassactError(f"--text-file {text_file}: not UTF-8 text") from None
        except OSError as exc:
            raise MassactError(f"--text-file {text_file}: cannot be read ({exc.strerror or exc})") from None
        if "\x00" in text:
            raise MassactError(f"--text-file {text_file}: a binary file, not text; give a UTF-8 text file")
        if not text.strip():
            raise MassactError(f"--text-file {text_file}: the file is empty; give a file with text")
        return text
    return default if prompt is None else prompt
