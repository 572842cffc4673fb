"""Training configurations: one dataclass and named presets (natural text and Bigram-Backcopy)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from massact.errors import MassactError
from massact.train.gpt2 import GPT2Config
from massact.validate import at_least

TOKENIZERS = ("bpe", "smollm2")
TASKS = ("text", "bigram-backcopy")
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainConfig:
    """Everything that decides a training run (two runs with equal configs see the same batches)."""

    model: GPT2Config = field(default_factory=GPT2Config)  # the model's shape and attention variant
    task: str = "text"  # "text": a corpus; "bigram-backcopy": generated sequences (massact.train.backcopy)
    triggers: int = 4  # bigram-backcopy: trigger tokens
    bigram_concentration: float = 0.5  # bigram-backcopy: Dirichlet parameter of the bigram rows
    task_seed: int = 0  # bigram-backcopy: seed of the bigram table and the triggers (fixed across run seeds)
    optimizer: str = "adamw"  # "muon": Muon for the blocks' 2-D weights, AdamW for the rest
    tokenizer: str = "bpe"  # "bpe": byte-level BPE trained on the corpus; "smollm2": the bundled tokenizer
    batch_size: int = 8  # sequences per micro-batch and process
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    max_steps: int = 1000  # optimizer steps
    learning_rate: float = 6e-4  # peak learning rate, after warm-up
    min_lr: float = 6e-5  # the cosine schedule's final learning rate
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW weight decay
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # gradient-norm clip
    eval_interval: int = 100  # steps between validation losses
    eval_batches: int = 8  # validation batches per evaluation
    monitor_interval: int = 50  # steps between activation-monitor probes
    probe_sequences: int = 4  # sequences the monitor runs
    checkpoint_interval: int = 200  # steps between checkpoints
    val_fraction: float = 0.05  # the corpus's last share held out for validation
    seed: int = 0  # seed of the weights and the batches

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = GPT2Config.from_dict(self.model)
        for name, allowed in (("task", TASKS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise MassactError(f"unknown {name} {getattr(self, name)!r}; use one of {', '.join(allowed)}")
        if self.tokenizer not in TOKENIZERS:
            raise MassactError(f"unknown tokenizer {self.tokenizer!r}; use one of {', '.join(TOKENIZERS)}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches", "monitor_interval"):
            at_least(name, getattr(self, name))
        if not 0 < self.val_fraction < 1:
            raise MassactError(f"`val_fraction={self.val_fraction}`: must be between 0 and 1")

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one process."""
        return self.batch_size * self.grad_accum * self.model.block_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


PRESETS: dict[str, TrainConfig] = {
    # Bigram-Backcopy, seconds on one CPU core: for tests and trying the command out.
    "backcopy-test": TrainConfig(
        model=GPT2Config(vocab_size=16, block_size=12, n_layer=2, n_head=2, n_embd=16),
        task="bigram-backcopy",
        triggers=2,
        batch_size=8,
        max_steps=12,
        learning_rate=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        weight_decay=0.0,
        eval_interval=6,
        eval_batches=2,
        monitor_interval=6,
        probe_sequences=4,
        checkpoint_interval=6,
    ),
    # Bigram-Backcopy on 2 CPU cores (see docs/attention_variants.md for the search that chose it).
    "backcopy-cpu": TrainConfig(
        model=GPT2Config(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64),
        task="bigram-backcopy",
        triggers=4,
        batch_size=32,
        max_steps=1500,
        learning_rate=1e-2,
        min_lr=1e-3,
        warmup_steps=50,
        weight_decay=0.0,
        eval_interval=100,
        eval_batches=4,
        monitor_interval=100,
        probe_sequences=16,
        checkpoint_interval=500,
    ),
    # 1.5M parameters, 4.1M training tokens per variant (2.3 passes over the Shakespeare plays):
    # the three variants take about 20 minutes on 2 idle CPU cores.
    "cpu-small": TrainConfig(
        model=GPT2Config(vocab_size=2048, block_size=128, n_layer=6, n_head=4, n_embd=128),
        tokenizer="bpe",
        batch_size=16,
        grad_accum=1,
        max_steps=2000,
        learning_rate=2e-3,
        min_lr=2e-4,
        warmup_steps=100,
        eval_interval=50,
        eval_batches=4,
        monitor_interval=50,
        probe_sequences=4,
        checkpoint_interval=100,
    ),
    # The paper's size (GPT-2 small, 124M with GPT-2's vocabulary; here 49,152 tokens of SmolLM2)
    # and nanoGPT's recipe: ~0.5M tokens per step over 8 GPUs (grad_accum is per process).
    "gpt2-124m": TrainConfig(
        model=GPT2Config(vocab_size=49152, block_size=1024, n_layer=12, n_head=12, n_embd=768),
        tokenizer="smollm2",
        batch_size=12,
        grad_accum=5,
        max_steps=50_000,
        learning_rate=6e-4,
        min_lr=6e-5,
        warmup_steps=2000,
        eval_interval=1000,
        eval_batches=50,
        monitor_interval=250,
        probe_sequences=8,
        checkpoint_interval=1000,
        val_fraction=0.005,
    ),
}


@dataclass(frozen=True)
class Targets:
    """What a preset is meant to grow in the `default` variant; the experiment's report checks them.

    `sink_rate`: the share of heads sinking on position 0, at least; `residual_peak`: |h_0| / median |h_i|
    in some block, at least; `massive`: a massive activation by the paper's criterion (massact.detect).
    """

    sink_rate: float | None = None
    residual_peak: float | None = None
    massive: bool = False

    def to_json(self) -> dict:
        return asdict(self)


# Bigram-Backcopy: the goal of the search in docs/attention_variants.md; text: the paper's GPT-2 (sinks and a
# massive activation in default).
PRESET_TARGETS: dict[str, Targets] = {
    "backcopy-test": Targets(sink_rate=0.5, residual_peak=5.0),
    "backcopy-cpu": Targets(sink_rate=0.5, residual_peak=5.0),
    "cpu-small": Targets(sink_rate=0.5, massive=True),
    "gpt2-124m": Targets(sink_rate=0.5, massive=True),
}


def get_preset(name: str, attention: str = "default", seed: int = 0, **overrides) -> TrainConfig:
    """A copy of preset `name` with the attention variant, seed and any other field overridden."""
    if name not in PRESETS:
        raise MassactError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    model = dataclasses.replace(base.model, attention=attention)
    fields = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(fields) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise MassactError(f"unknown training setting(s) {', '.join(sorted(unknown))}")
    return dataclasses.replace(base, model=model, seed=seed, **fields)
