"""The attention-bias experiment: train default / sink / bias with equal budgets and seeds, compare.

Each variant trains into `OUT/runs/<variant>` (resumable); the report (`report.md`,
`results.json`, `figures/`) lands in `OUT` all at once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState
from rich.console import Console

from massact.data.corpus import load_texts
from massact.outputs import check_output_dir, staged_output
from massact.train.data import TokenData, load_tokenizer, make_tokenizer
from massact.train.gpt2 import ATTENTION_VARIANTS
from massact.train.presets import TrainConfig, get_preset
from massact.train.report import write_experiment_report
from massact.train.trainer import TrainResult, train

console = Console(stderr=True)


@dataclass
class ExperimentResult:
    preset: str
    corpus: str
    configs: dict[str, TrainConfig]
    results: dict[str, TrainResult]


def prepare_data(config: TrainConfig, corpus: str, work_dir: Path) -> TokenData:
    """Tokenize the corpus once for all variants (the tokenizer is trained once and reused)."""
    texts = load_texts(corpus)
    tokenizer_file = work_dir / "tokenizer.json"
    if config.tokenizer == "bpe" and tokenizer_file.is_file():
        tokenizer = load_tokenizer(tokenizer_file)
    else:
        tokenizer = make_tokenizer(config, texts)
        work_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.backend_tokenizer.save(str(tokenizer_file))
    return TokenData.from_texts(texts, tokenizer, config)


def run_attention_bias(
    out: Path,
    preset: str = "cpu-small",
    corpus: str = "shakespeare",
    seed: int = 0,
    max_steps: int | None = None,
    device: str | None = None,
    variants: tuple[str, ...] = ATTENTION_VARIANTS,
) -> ExperimentResult:
    """Train every variant of `preset` (same seed, data, steps), then write the comparison report."""
    out = check_output_dir(out)
    configs = {v: get_preset(preset, attention=v, seed=seed, max_steps=max_steps) for v in variants}
    work_dir = out / "runs"
    with console.status(f"tokenizing {corpus} ..."):
        data = prepare_data(configs[variants[0]], corpus, work_dir)
    console.print(f"{corpus}: {len(data.train):,} training and {len(data.val):,} validation tokens")
    results = {}
    for variant in variants:
        results[variant] = train(configs[variant], data, work_dir / variant, resume=True, device=device)
    experiment = ExperimentResult(preset=preset, corpus=corpus, configs=configs, results=results)
    if PartialState().is_main_process:  # one writer when launched on several GPUs
        with staged_output(out) as staging:
            write_experiment_report(experiment, staging)
    return experiment
