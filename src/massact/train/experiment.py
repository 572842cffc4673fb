"""The attention-bias experiment: train default / sink / bias with equal budgets and seeds, compare.

Each variant trains into `OUT/runs/<variant>` (resumable, checkpoints written atomically, its
summary staged); the report (`report.md`, `results.json`, `figures/`) is the result's `write(out)`.
"""

from __future__ import annotations

from pathlib import Path

from massact.data.corpus import load_texts
from massact.outputs import check_output_dir
from massact.progress import say, status
from massact.train.data import TokenData, load_tokenizer, make_tokenizer
from massact.train.files import atomic_write_text
from massact.train.gpt2 import ATTENTION_VARIANTS
from massact.train.presets import TrainConfig, get_preset
from massact.train.report import ExperimentResult
from massact.train.trainer import train


def prepare_data(config: TrainConfig, corpus: str, work_dir: Path) -> TokenData:
    """Tokenize the corpus once for all variants (the tokenizer is trained once and reused)."""
    texts = load_texts(corpus)
    tokenizer_file = work_dir / "tokenizer.json"
    if config.tokenizer == "bpe" and tokenizer_file.is_file():
        tokenizer = load_tokenizer(tokenizer_file)
    else:
        tokenizer = make_tokenizer(config, texts)
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(tokenizer_file, tokenizer.backend_tokenizer.to_str(pretty=True))
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
    """Train every variant of `preset` (same seed, data, steps) in `out/runs/<variant>`.

    The returned result's `write(out)` writes the comparison report.
    """
    out = check_output_dir(out)
    configs = {v: get_preset(preset, attention=v, seed=seed, max_steps=max_steps) for v in variants}
    work_dir = out / "runs"
    with status(f"tokenizing {corpus} ..."):
        data = prepare_data(configs[variants[0]], corpus, work_dir)
    say(f"{corpus}: {len(data.train):,} training and {len(data.val):,} validation tokens")
    results = {}
    for variant in variants:
        results[variant] = train(configs[variant], data, work_dir / variant, resume=True, device=device)
        results[variant].save_summary()
    return ExperimentResult(preset=preset, corpus=corpus, configs=configs, results=results)
