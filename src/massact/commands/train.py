"""`massact train gpt2`: train a GPT-2 with one attention variant on text or Bigram-Backcopy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import Opt, emit_result, install_help
from massact.defaults import ATTENTION_VARIANTS, TRAIN_PRESETS
from massact.errors import MassactError
from massact.outputs import check_output_dir
from massact.progress import say, status

app = typer.Typer(help="Train models (GPT-2 with a choice of attention designs).", no_args_is_help=True)

AttentionOpt = Annotated[str, typer.Option("--attention", help=f"One of {', '.join(ATTENTION_VARIANTS)}.")]
PresetOpt = Annotated[
    str, typer.Option("--preset", help=f"{', '.join(TRAIN_PRESETS)} (backcopy-*: the Bigram-Backcopy task).")
]
CorpusOpt = Annotated[
    str, typer.Option("--corpus", help="shakespeare (offline), another corpus name, a .txt/.jsonl file or a folder.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the weights and of the batch order.")]
StepsOpt = Annotated[int | None, typer.Option("--max-steps", min=1, help="Override the preset's number of steps.")]
OptimizerOpt = Annotated[str | None, typer.Option("--optimizer", help="adamw or muon (default: the preset's).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda if available).")]


def check_train_device(device: str | None) -> str | None:
    """Refuse a device this machine lacks (e.g. --device cuda without CUDA) or one training does not use."""
    if device is not None and device != "cpu" and not device.startswith("cuda"):
        raise MassactError(f"--device {device}: use cpu or cuda")
    from massact.models.loading import check_device

    return None if device is None else check_device(device)


@app.command("gpt2")
def gpt2_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Run directory: checkpoint, val_log.csv, monitor.csv/json, summary.json; TensorBoard logs in "
            f"tensorboard/ with {install_help('tensorboard')}.",
        ),
    ],
    attention: AttentionOpt = "default",
    preset: PresetOpt = "cpu-small",
    corpus: CorpusOpt = "shakespeare",
    seed: SeedOpt = 0,
    max_steps: StepsOpt = None,
    optimizer: OptimizerOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")] = False,
    device: DeviceOpt = None,
    as_json: Opt.Json = False,
) -> None:
    """Train GPT-2 with one attention variant (--attention) and the activation monitor on."""
    from massact.train.checkpoint import find_checkpoint
    from massact.train.experiment import task_data
    from massact.train.presets import get_preset
    from massact.train.trainer import train

    config = get_preset(preset, attention=attention, seed=seed, max_steps=max_steps, optimizer=optimizer)
    out = check_output_dir(out)
    device = check_train_device(device)
    if resume and find_checkpoint(out) is None:
        raise MassactError(f"--resume: {out} holds no checkpoint to continue; drop --resume to start a new run there")
    with status(f"preparing {config.task if config.task != 'text' else corpus} ..."):
        data = task_data(config, corpus, out)
    if not as_json:
        say(data.describe())
    result = train(config, data, out, resume=resume, device=device, progress=not as_json)
    if result.main_process:
        emit_result(result, out, as_json)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="train")
