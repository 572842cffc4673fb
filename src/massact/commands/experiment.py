"""`massact experiment attention-bias`: default vs sink vs bias attention, trained with equal budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import Opt, emit_result
from massact.commands.train import CorpusOpt, DeviceOpt, PresetOpt, SeedOpt, StepsOpt, check_train_device
from massact.outputs import check_output_dir

app = typer.Typer(help="Experiments that reproduce the paper's findings.", no_args_is_help=True)


@app.command("attention-bias")
def attention_bias_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for report.md, results.json, figures/ and runs/.")],
    preset: PresetOpt = "cpu-small",
    corpus: CorpusOpt = "shakespeare",
    seed: SeedOpt = 0,
    max_steps: StepsOpt = None,
    device: DeviceOpt = None,
    as_json: Opt.Json = False,
) -> None:
    """Train default, sink and bias GPT-2 (same data, seed, steps) and compare their activations."""
    out = check_output_dir(out)
    from massact.train.experiment import run_attention_bias
    from massact.train.presets import get_preset

    get_preset(preset)  # unknown preset: fail before any work
    device = check_train_device(device)
    result = run_attention_bias(out, preset=preset, corpus=corpus, seed=seed, max_steps=max_steps, device=device)
    if all(run.main_process for run in result.results.values()):  # one writer when launched on several GPUs
        emit_result(result, out, as_json)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="experiment")
