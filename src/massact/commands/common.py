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
from rich.markup import escape

from massact.errors import MassactError, install_hint
from massact.models.names import check_local_source
from massact.outputs import check_output_dir, staged_output, to_json_text
from massact.progress import console, status

if TYPE_CHECKING:  # imported where used, so that help and usage errors never wait for torch
    from massact.detect import Thresholds
    from massact.models.loading import LoadedModel
    from massact.tasks import TaskConfig

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
OffloadOpt = Annotated[
    str,
    typer.Option(
        "--offload",
        help="none: load the whole model; blocks: read it from its checkpoint one block at a time (models larger "
        "than memory); auto: blocks when the weights and the run do not fit --max-memory.",
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Memory the run may use on its device, e.g. 20GB or 1.5GiB (default: what is available, less 10%, "
        "at least 1 GiB).",
    ),
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


def install_help(extra: str) -> str:
    """`install_hint(extra)` for help text, whose square brackets would otherwise be read as markup."""
    return escape(install_hint(extra))


TasksOpt = Annotated[
    str | None,
    typer.Option(
        "--tasks",
        help=f"Zero-shot accuracy through lm-eval ({install_help('eval')}): comma-separated task names "
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
    offload: OffloadOpt = "auto"
    max_memory: MaxMemoryOpt = None

    def __post_init__(self) -> None:
        if self.offload not in ("none", "blocks", "auto"):
            raise MassactError(f"--offload {self.offload}: give none, blocks or auto")
        if self.offload == "blocks" and self.device_map is not None:
            raise MassactError("--offload blocks and --device-map both place the weights; give one of them")
        if self.max_memory is not None:
            from massact.models.memory import parse_size

            parse_size(self.max_memory)  # the CLI names it --max-memory
        if self.dtype == "auto" and self.device is None:
            return  # nothing to check, and no reason to import torch
        from massact.models.loading import check_device, check_dtype

        check_dtype(self.dtype)
        if self.device is not None:
            check_device(self.device)

    def load(self, model: str, batch: int | None = None, tokens: int | None = None) -> LoadedModel:
        """Load `model` with a status line while it loads; `batch` x `tokens` is the run's largest pass."""
        from massact.models.memory import Workload

        workload = Workload(batch or Workload.batch, tokens or Workload.tokens)
        return load_for_cli(
            model, self.dtype, self.device, self.device_map, self.trust_remote_code, self.offload, self.max_memory,
            workload,
        )  # fmt: skip


@dataclass(frozen=True)
class TaskOptions:
    """Zero-shot tasks scored next to perplexity: `--tasks` and `--tasks-limit` (see `model_command`)."""

    tasks: TasksOpt = None
    tasks_limit: TasksLimitOpt = None

    def config(self, batch_size: int) -> TaskConfig | None:
        """The prepared task config, or None without --tasks; bad tasks fail here, before a model loads."""
        from massact.tasks import task_config

        return task_config(self.tasks, self.tasks_limit, batch_size)


@dataclass(frozen=True)
class ThresholdOptions:
    """The detection criterion: `--abs-threshold` and `--ratio-threshold` (see `model_command`)."""

    abs_threshold: AbsThresholdOpt = 100.0
    ratio_threshold: RatioThresholdOpt = 1000.0

    def thresholds(self) -> Thresholds:
        """The criterion as `massact.detect.Thresholds`."""
        from massact.detect import Thresholds

        return Thresholds(abs=self.abs_threshold, ratio=self.ratio_threshold)


OPTION_GROUPS = (ModelOptions, TaskOptions, ThresholdOptions)


def _group_options(group: type) -> list[inspect.Parameter]:
    hints = inspect.get_annotations(group, eval_str=True)
    return [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields(group)
    ]


def model_command(fn: Callable) -> Callable:
    """Give a command the shared options, each group defined once.

    A parameter of `fn` typed with an option group is expanded into the group's options in its
    place: `opts: ModelOptions` gives `--dtype`, `--device`, `--device-map`, `--trust-remote-code`
    and `--blocks`; `detection: ThresholdOptions` gives `--abs-threshold` and `--ratio-threshold`;
    `tasks: TaskOptions` gives `--tasks` and `--tasks-limit`. An `out` that cannot be written and a
    `model` path that does not exist are refused before anything runs, so they cost nothing.
    """
    signature = inspect.signature(fn, eval_str=True)
    parameters: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for name, parameter in signature.parameters.items():
        if parameter.annotation in OPTION_GROUPS:
            groups[name] = parameter.annotation
            parameters += _group_options(parameter.annotation)
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(fn)
    def command(**kwargs):
        if kwargs.get("out") is not None:
            check_output_dir(kwargs["out"])
        if isinstance(kwargs.get("model"), str):
            check_local_source(kwargs["model"])
        built = {name: group(**{f.name: kwargs.pop(f.name) for f in fields(group)}) for name, group in groups.items()}
        return fn(**kwargs, **built)

    command.__signature__ = signature.replace(parameters=parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    del command.__wrapped__  # typer must read the new signature, not fn's
    return command


class Result(Protocol):
    """What every analysis returns: JSON for programs, a terminal view for people, files for a folder."""

    def to_json(self) -> dict: ...

    def show(self, console: Console) -> None: ...

    def write(self, out: Path) -> None: ...  # every file of the run, report.html included


def emit_result(result: Result, out: Path | None, as_json: bool) -> None:
    """Print the JSON (with --json) or the terminal view; then write the result's files into `out`, all or none."""
    if as_json:
        typer.echo(to_json_text(result.to_json()))
    else:
        result.show(stdout_console())
    if out is not None:
        with staged_output(out) as staging:
            result.write(staging)  # its files and report.html (`massact.html.registry.result_kind`)
            names = sorted(p.name for p in staging.iterdir())
        if not as_json:
            console.print(f"wrote {out}/: {', '.join(names)}", markup=False, soft_wrap=True)


def load_for_cli(
    model: str,
    dtype: str,
    device: str | None,
    device_map: str | None,
    trust_remote_code: bool,
    offload: str = "auto",
    max_memory: str | None = None,
    workload: object = None,
) -> LoadedModel:
    """Load a model for a command, with a status line while it loads."""
    from massact.models.loading import load_model

    with status(f"loading {model} ..."):
        return load_model(
            model,
            dtype=dtype,
            device=device,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            offload=offload,
            max_memory=max_memory,
            workload=workload,  # type: ignore[arg-type]
        )


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
