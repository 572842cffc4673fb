"""`run(config, out) -> TrainResult`: one training run, its data made from the config, its folder written."""

from __future__ import annotations

from pathlib import Path

from massact.outputs import check_output_dir
from massact.progress import say, status
from massact.train.config import TrainConfig
from massact.train.trainer import TrainResult, train


def run(
    config: TrainConfig,
    out: Path,
    *,
    corpus: str = "shakespeare",
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `config` into the run folder `out` (checkpoint, logs, monitor); `result.write(out)` adds the report.

    The data is what `config.task` asks for: Bigram-Backcopy sequences, or `corpus` (a name, a .txt/.jsonl
    file or a folder) tokenized. `resume` continues from the checkpoint in `out`.
    """
    from massact.train.experiment import task_data

    out = check_output_dir(out)
    with status(f"preparing {config.task if config.task != 'text' else corpus} ..."):
        data = task_data(config, corpus, out)
    if progress:
        say(data.describe())
    return train(config, data, out, resume=resume, device=device, progress=progress)
