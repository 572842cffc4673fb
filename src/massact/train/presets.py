"""Named training presets (natural text and Bigram-Backcopy) and what each is meant to grow."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from massact.errors import MassactError
from massact.train.config import ModelConfig, TrainConfig

PRESETS: dict[str, TrainConfig] = {
    # Bigram-Backcopy, seconds on one CPU core: for tests and trying the command out.
    "backcopy-test": TrainConfig(
        model=ModelConfig(vocab_size=16, block_size=12, n_layer=2, n_head=2, n_embd=16),
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
        model=ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64),
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
    # LLaMA-shaped (RMSNorm gains, SwiGLU, rotary, untied head) Bigram-Backcopy, about 3.5 minutes per run on one
    # CPU core: the search in docs/attention_variants.md. Weight decay puts the top entry on BOS in one dim, width
    # 128 grows it, sharp bigram rows (Dirichlet 0.1) take it past 100x the median; only block 0's heads sink
    # (block 1's give BOS the share uniform attention would), so 2 blocks give a sink rate of 0.5, 3 give 0.33.
    "backcopy-llama": TrainConfig(
        model=ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=128, arch="llama"),
        task="bigram-backcopy",
        triggers=4,
        bigram_concentration=0.1,
        batch_size=32,
        max_steps=3000,
        learning_rate=1e-2,
        min_lr=1e-3,
        warmup_steps=50,
        schedule="constant",
        weight_decay=0.1,
        eval_interval=250,
        eval_batches=4,
        monitor_interval=250,
        probe_sequences=16,
        checkpoint_interval=1000,
    ),
    # 1.5M parameters, 4.1M training tokens per variant (2.3 passes over the Shakespeare plays):
    # the three variants take about 20 minutes on 2 idle CPU cores.
    "cpu-small": TrainConfig(
        model=ModelConfig(vocab_size=2048, block_size=128, n_layer=6, n_head=4, n_embd=128),
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
        model=ModelConfig(vocab_size=49152, block_size=1024, n_layer=12, n_head=12, n_embd=768),
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

    Each number is "at least", on the final model: `sink_rate`, the share of heads sinking on position 0;
    `residual_peak`, |h_0| / median |h_i| in some block; for the block with the largest top-1 / median, `top1` (its
    |x|), `top1_median` (its ratio to the median |x|), `top1_on_bos` (the share of probe sequences whose top
    entry is on BOS) and `dim_constancy` (their share in one dim). `massive`: a massive activation by the
    paper's criterion (massact.detect). A run meets the targets when it reaches every number.
    """

    sink_rate: float | None = None
    residual_peak: float | None = None
    top1: float | None = None
    top1_median: float | None = None
    top1_on_bos: float | None = None
    dim_constancy: float | None = None
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
    "backcopy-llama": Targets(sink_rate=0.5, top1=100.0, top1_median=100.0, top1_on_bos=0.9, dim_constancy=0.9),
}


def get_preset(
    name: str, attention: str = "default", seed: int = 0, arch: str | None = None, **overrides
) -> TrainConfig:
    """A copy of preset `name` with the attention design, seed, architecture and any other field overridden."""
    if name not in PRESETS:
        raise MassactError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    model = dataclasses.replace(base.model, attention=attention, arch=arch or base.model.arch)
    fields = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(fields) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise MassactError(f"unknown training setting(s) {', '.join(sorted(unknown))}")
    return dataclasses.replace(base, model=model, seed=seed, **fields)
