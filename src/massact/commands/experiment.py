"""`massact experiment attention-variants`: attention designs side by side, same task, budget and seeds.

`experiment attention-bias` is its natural-text case with the paper's three variants.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from massact.commands.common import Opt, emit_result
from massact.commands.train import CorpusOpt, DeviceOpt, OptimizerOpt, SeedOpt, StepsOpt, check_train_device
from massact.defaults import ATTENTION_VARIANTS
from massact.errors import MassactError
from massact.outputs import check_output_dir

if TYPE_CHECKING:
    from massact.train.experiment import ExperimentConfig

app = typer.Typer(help="Experiments that reproduce the paper's findings.", no_args_is_help=True)

OutOpt = Annotated[
    Path, typer.Option("--out", help="Directory for experiment.json, report.md/html, figures/ and runs/.")
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset", help="backcopy-test, backcopy-cpu, backcopy-llama (Bigram-Backcopy) or cpu-small, gpt2-124m (text)."
    ),
]


def parse_variants(text: str) -> tuple[str, ...]:
    """'all' or a comma-separated list of variant names."""
    if text.strip() == "all":
        return ATTENTION_VARIANTS
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise MassactError("--variants: give variant names separated by commas, or all")
    return names


def _run(out: Path, config: ExperimentConfig, device: str | None, as_json: bool) -> None:
    from massact.train.experiment import run_experiment

    out = check_output_dir(out)
    device = check_train_device(device)
    result = run_experiment(out, config, device=device)
    if all(run.main_process for run in result.runs.values()):  # one writer when launched on several GPUs
        emit_result(result, out, as_json)


@app.command("attention-variants")
def attention_variants_command(
    out: OutOpt,
    task: Annotated[
        str,
        typer.Option("--task", help="bigram-backcopy, or a text corpus: shakespeare, a .txt/.jsonl file, a folder."),
    ] = "bigram-backcopy",
    variants: Annotated[
        str, typer.Option("--variants", help=f"Comma-separated, or all: {', '.join(ATTENTION_VARIANTS)}.")
    ] = "all",
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds 0 .. N-1 per variant.")] = 3,
    preset: PresetOpt = None,
    optimizer: OptimizerOpt = None,
    max_steps: StepsOpt = None,
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="gpt2 or llama: the blocks the preset's shape is built from (default: its own)."),
    ] = None,
    device: DeviceOpt = None,
    as_json: Opt.Json = False,
) -> None:
    """Train each attention variant x seed on one task; compare sinks, top entries, peaks, drains and kurtosis."""
    from massact.train.experiment import ExperimentConfig

    config = ExperimentConfig(
        task=task,
        variants=parse_variants(variants),
        seeds=seeds,
        preset=preset,
        optimizer=optimizer,
        max_steps=max_steps,
        arch=arch,
    )
    _run(out, config, device, as_json)


@app.command("attention-bias")
def attention_bias_command(
    out: OutOpt,
    preset: PresetOpt = "cpu-small",
    corpus: CorpusOpt = "shakespeare",
    seed: SeedOpt = 0,
    max_steps: StepsOpt = None,
    device: DeviceOpt = None,
    as_json: Opt.Json = False,
) -> None:
    """The paper's case: default, sink-token and attn-bias GPT-2 on text (attention-variants, one seed)."""
    from massact.train.experiment import ExperimentConfig

    paper = ("default", "sink-token", "attn-bias")
    config = ExperimentConfig(task=corpus, variants=paper, seeds=1, first_seed=seed, preset=preset, max_steps=max_steps)
    _run(out, config, device, as_json)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="experiment")
