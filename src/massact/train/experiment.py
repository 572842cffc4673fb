"""The attention-variants experiment: every variant x seed trained with the same task, preset and budget.

Each run trains into `OUT/runs/<variant>/seed<k>` (resumable: a finished run is read back, not
retrained; checkpoints are written atomically); the report (`experiment.json`, `report.md`,
`figures/`) is the result's `write(out)`. The task is Bigram-Backcopy (generated sequences) or a
text corpus (Shakespeare by default), whose tokenizer is trained once and shared by every run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from massact.data.corpus import load_texts
from massact.defaults import ATTENTION_VARIANTS
from massact.errors import MassactError
from massact.outputs import atomic_write_text, check_output_dir
from massact.progress import say, status
from massact.train.backcopy import BackcopyData, BackcopyTask
from massact.train.config import ARCHITECTURES, OPTIMIZERS, TrainConfig
from massact.train.data import TokenData, load_tokenizer, make_tokenizer
from massact.train.presets import PRESETS, get_preset
from massact.train.report import ExperimentResult
from massact.train.trainer import train
from massact.train.variants import check_variant
from massact.validate import at_least, given

BACKCOPY = "bigram-backcopy"
DEFAULT_PRESETS = {BACKCOPY: "backcopy-cpu", "text": "cpu-small"}
# What Ctrl-C tells the user: the experiment has no --resume; the same command continues every run
RERUN = "rerun the same command to continue (finished runs are read back, unfinished ones resume)"


def prepare_data(config: TrainConfig, corpus: str, work_dir: Path) -> TokenData:
    """Tokenize the corpus once for all runs (the tokenizer is trained once and reused)."""
    texts = load_texts(corpus)
    tokenizer_file = work_dir / "tokenizer.json"
    if config.tokenizer == "bpe" and tokenizer_file.is_file():
        tokenizer = load_tokenizer(tokenizer_file)
    else:
        tokenizer = make_tokenizer(config, texts)
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(tokenizer_file, tokenizer.backend_tokenizer.to_str(pretty=True))
    return TokenData.from_texts(texts, tokenizer, config)


def task_data(config: TrainConfig, corpus: str, work_dir: Path) -> TokenData | BackcopyData:
    """The data `config.task` asks for: generated Bigram-Backcopy sequences, or `corpus` tokenized."""
    if config.task == BACKCOPY:
        task = BackcopyTask(config.model.vocab_size, config.triggers, config.bigram_concentration, config.task_seed)
        return BackcopyData(task)
    with status(f"tokenizing {corpus} ..."):
        return prepare_data(config, corpus, work_dir)


@dataclass(frozen=True)
class ExperimentConfig:
    """What the experiment trains: `task` ("bigram-backcopy" or a corpus), variants, seeds, preset.

    Seeds `first_seed` .. `first_seed + seeds - 1` for every variant.
    """

    task: str = BACKCOPY  # "bigram-backcopy" or a corpus name
    variants: tuple[str, ...] = ATTENTION_VARIANTS  # the attention variants trained
    seeds: int = 3  # runs per variant
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1
    preset: str | None = None  # None: the task's default preset
    optimizer: str | None = None  # None: the preset's
    max_steps: int | None = None  # None: the preset's
    arch: str | None = None  # "gpt2" or "llama"; None: the preset's

    def __post_init__(self) -> None:
        variants = tuple(check_variant(v) for v in self.variants)
        if not variants:
            raise MassactError("give at least one attention variant")
        if len(set(variants)) != len(variants):
            raise MassactError(f"a variant is listed twice: {', '.join(self.variants)}")
        object.__setattr__(self, "variants", variants)
        at_least("seeds", self.seeds)
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise MassactError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.max_steps is not None:
            at_least("max_steps", self.max_steps)
        if self.arch is not None and self.arch not in ARCHITECTURES:
            raise MassactError(f"{given('arch', self.arch)}: use one of {', '.join(ARCHITECTURES)}")
        if self.preset_name not in PRESETS:
            raise MassactError(f"unknown preset {self.preset_name!r}; use one of {', '.join(PRESETS)}")
        preset_task = PRESETS[self.preset_name].task
        if (preset_task == BACKCOPY) != self.is_backcopy:
            kind = "Bigram-Backcopy" if preset_task == BACKCOPY else "text"
            raise MassactError(
                f"preset {self.preset_name!r} is a {kind} preset; it does not fit {given('task', self.task)}"
            )

    @property
    def is_backcopy(self) -> bool:
        return self.task == BACKCOPY

    @property
    def corpus(self) -> str | None:
        return None if self.is_backcopy else self.task

    @property
    def preset_name(self) -> str:
        return self.preset or DEFAULT_PRESETS[BACKCOPY if self.is_backcopy else "text"]

    def run_config(self, variant: str, seed: int) -> TrainConfig:
        config = get_preset(self.preset_name, attention=variant, seed=seed, arch=self.arch, max_steps=self.max_steps)
        return config if self.optimizer is None else dataclasses.replace(config, optimizer=self.optimizer)


def run_experiment(out: Path, config: ExperimentConfig, device: str | None = None) -> ExperimentResult:
    """Train every variant x seed of `config` in `out/runs/<variant>/seed<k>` (finished runs are read back).

    The returned result's `write(out)` writes experiment.json, report.md and figures/.
    """
    out = check_output_dir(out)
    work_dir = out / "runs"
    seeds = range(config.first_seed, config.first_seed + config.seeds)
    first = config.run_config(config.variants[0], seeds[0])
    data = task_data(first, config.corpus or "", work_dir)
    say(data.describe())
    runs = {}
    total = len(config.variants) * len(seeds)
    try:
        for variant in config.variants:
            for seed in seeds:
                run_dir = work_dir / variant / f"seed{seed}"
                run = train(config.run_config(variant, seed), data, run_dir, resume=True, device=device, rerun=RERUN)
                run.save_summary()
                runs[variant, seed] = run
    except KeyboardInterrupt as exc:  # the command line prints the message after "massact: interrupted;"
        done = f"{len(runs)} of {total} runs finished in {work_dir}"
        raise KeyboardInterrupt(f"{exc}; {done}" if str(exc) else f"{done}; {RERUN}") from None
    return ExperimentResult(config.task, config.preset_name, first, runs, out=out)
