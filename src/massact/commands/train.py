"""`massact train gpt2`: train a GPT-2 with one attention variant on text or Bigram-Backcopy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import Opt, emit_result, install_help
from massact.defaults import ATTENTION_VARIANTS, TRAIN_PRESETS
from massact.errors import MassactError
from massact.outputs import check_output_dir

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


OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Run directory: checkpoint, val_log.csv, monitor.csv/json, summary.json, report.md/html, figures/; "
        f"TensorBoard logs in tensorboard/ with {install_help('tensorboard')}.",
    ),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")]


def _train(arch: str, out: Path, attention: str, preset: str, corpus: str, seed: int, max_steps: int | None,
           optimizer: str | None, resume: bool, device: str | None, as_json: bool) -> None:  # fmt: skip
    from massact.train.checkpoint import find_checkpoint
    from massact.train.presets import get_preset
    from massact.train.runner import run

    config = get_preset(preset, attention=attention, seed=seed, arch=arch, max_steps=max_steps, optimizer=optimizer)
    out = check_output_dir(out)
    device = check_train_device(device)
    if resume and find_checkpoint(out) is None:
        raise MassactError(f"--resume: {out} holds no checkpoint to continue; drop --resume to start a new run there")
    result = run(config, out, corpus=corpus, resume=resume, device=device, progress=not as_json)
    if result.main_process:
        emit_result(result, out, as_json)


def train_command(arch: str, default_preset: str, doc: str):
    """The `massact train ARCH` command: the same options for every architecture, its own default preset."""

    def command(
        out: OutOpt,
        attention: AttentionOpt = "default",
        preset: PresetOpt = default_preset,
        corpus: CorpusOpt = "shakespeare",
        seed: SeedOpt = 0,
        max_steps: StepsOpt = None,
        optimizer: OptimizerOpt = None,
        resume: ResumeOpt = False,
        device: DeviceOpt = None,
        as_json: Opt.Json = False,
    ) -> None:
        _train(arch, out, attention, preset, corpus, seed, max_steps, optimizer, resume, device, as_json)

    command.__doc__ = doc
    command.__name__ = f"{arch}_command"
    return command


gpt2_command = app.command("gpt2")(
    train_command(
        "gpt2", "cpu-small", "Train GPT-2 (LayerNorm, GELU, learned positions, tied head) with one attention variant."
    )
)
llama_command = app.command("llama")(
    train_command(
        "llama", "backcopy-llama", "Train a LLaMA-shaped model (RMSNorm, SwiGLU, rotary, untied head), one variant."
    )
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="train")
