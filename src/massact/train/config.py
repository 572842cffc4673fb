"""What a training run is: the model's shape and design (`ModelConfig`) and the run's settings (`TrainConfig`).

Both are frozen: change one with `dataclasses.replace`. Two runs with equal configs see the same batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from massact.errors import MassactError
from massact.train.variants import check_variant
from massact.validate import at_least, given

ARCHITECTURES = ("gpt2", "llama")
TOKENIZERS = ("bpe", "smollm2")
TASKS = ("text", "bigram-backcopy")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the model; `arch` picks the blocks, `attention` the design (`massact.train.variants`).

    `gpt2`: LayerNorm, GELU MLP, learned positions, biases, head tied to the embedding. `llama`: RMSNorm
    with per-channel gains, SwiGLU MLP, rotary positions, no biases, untied head.
    """

    vocab_size: int = 50304  # tokens in the vocabulary
    block_size: int = 1024  # longest input, in text tokens
    n_layer: int = 12  # blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # hidden size
    dropout: float = 0.0  # dropout probability
    attention: str = "default"  # the design, one of `massact.train.variants.VARIANTS`
    arch: str = "gpt2"  # "gpt2" or "llama"
    mlp_ratio: int = 4  # the MLP's hidden size over n_embd
    rope_theta: float = 10000.0  # llama: base of the rotary frequencies
    norm_eps: float = 1e-5  # the norms' epsilon

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", check_variant(self.attention))
        object.__setattr__(self, "_attn_implementation", "sdpa")  # how attention runs, not what the model is
        if self.arch not in ARCHITECTURES:
            raise MassactError(f"{given('arch', self.arch)}: use one of {', '.join(ARCHITECTURES)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            at_least(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise MassactError(f"`n_embd={self.n_embd}` is not divisible by `n_head={self.n_head}`")
        if self.arch == "llama" and self.head_dim % 2:
            raise MassactError(f"rotary positions need an even head size; `n_embd / n_head` is {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def intermediate_size(self) -> int:
        return self.mlp_ratio * self.n_embd

    @property
    def n_positions(self) -> int:
        """Positions needed: one more than `block_size` for the sink token."""
        return self.block_size + (1 if self.attention == "sink-token" else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (two runs with equal configs see the same batches)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the model's shape and attention variant
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
    schedule: str = "cosine"  # after warm-up: "cosine" down to min_lr, or "constant"
    weight_decay: float = 0.1  # AdamW weight decay (matrices; norm gains too with decay_norm_gains)
    decay_norm_gains: bool = False  # weight decay on the norms' gains too (they are 1-D: spared by default)
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
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        for name, allowed in (
            ("task", TASKS),
            ("optimizer", OPTIMIZERS),
            ("tokenizer", TOKENIZERS),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise MassactError(f"{given(name, getattr(self, name))}: use one of {', '.join(allowed)}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches", "monitor_interval"):
            at_least(name, getattr(self, name))
        at_least("probe_sequences", self.probe_sequences)
        at_least("checkpoint_interval", self.checkpoint_interval)
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
