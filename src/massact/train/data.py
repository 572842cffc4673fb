"""Training data: a tokenizer, one token stream split into train / validation, and seeded batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from massact.errors import MassactError
from massact.models.loading import default_gguf_path, gguf_cache_dir
from massact.train.config import TrainConfig

EOS = "<|endoftext|>"


def train_bpe_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts` (deterministic), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS)


def smollm2_tokenizer():
    """The tokenizer of the bundled SmolLM2 model (49,152 tokens), offline; the model itself is not loaded."""
    from transformers import AutoTokenizer

    gguf = default_gguf_path()
    converted = gguf_cache_dir(gguf)
    if (converted / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(converted))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_tokenizer(path: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS)


def make_tokenizer(config: TrainConfig, texts: list[str]):
    """The tokenizer `config` asks for; its vocabulary must fit the model's embedding."""
    tokenizer = (
        train_bpe_tokenizer(texts, config.model.vocab_size) if config.tokenizer == "bpe" else smollm2_tokenizer()
    )
    if len(tokenizer) > config.model.vocab_size:
        raise MassactError(
            f"the {config.tokenizer} tokenizer has {len(tokenizer)} tokens but the model only "
            f"{config.model.vocab_size}; raise vocab_size"
        )
    return tokenizer


@dataclass
class TokenData:
    """The corpus as token ids: a train stream and a validation stream (its last `val_fraction`)."""

    train: torch.Tensor
    val: torch.Tensor
    tokenizer: object

    @classmethod
    def from_texts(cls, texts: list[str], tokenizer, config: TrainConfig) -> TokenData:
        eos = tokenizer.convert_tokens_to_ids(EOS)
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        stream: list[int] = []
        for ids in encoded:
            stream.extend(ids)
            if eos is not None and eos >= 0:
                stream.append(eos)
        ids = torch.tensor(stream, dtype=torch.int32)
        cut = int(len(ids) * (1 - config.val_fraction))
        data = cls(train=ids[:cut], val=ids[cut:], tokenizer=tokenizer)
        data.check(config)
        return data

    def batch(self, batch_size: int, block_size: int, seed: int) -> torch.Tensor:
        """One training batch, drawn from `seed` alone."""
        return random_batch(self.train, batch_size, block_size, seed)

    def windows(self, count: int, block_size: int) -> torch.Tensor:
        """`count` fixed validation windows (evaluation and the monitor's probe)."""
        return fixed_windows(self.val, count, block_size)

    def describe(self) -> str:
        return f"{len(self.train):,} training and {len(self.val):,} validation tokens"

    def check(self, config: TrainConfig) -> None:
        need = config.model.block_size + 1
        for name, ids in (("training", self.train), ("validation", self.val)):
            if len(ids) < need:
                raise MassactError(
                    f"the corpus is too small: its {name} part has {len(ids)} tokens, one batch needs "
                    f"{need} (block_size {config.model.block_size} + 1); give a bigger corpus or a smaller preset"
                )


def random_batch(ids: torch.Tensor, batch_size: int, block_size: int, seed: int) -> torch.Tensor:
    """`batch_size` windows of `block_size` tokens at starts drawn from `seed` alone (resumable)."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - block_size, (batch_size,), generator=generator)
    return torch.stack([ids[s : s + block_size] for s in starts.tolist()]).long()


def fixed_windows(ids: torch.Tensor, count: int, block_size: int) -> torch.Tensor:
    """`count` windows spread evenly over `ids` (the same every time: validation and probe batches)."""
    last = len(ids) - block_size
    starts = torch.linspace(0, last, steps=count).long().unique()
    return torch.stack([ids[s : s + block_size] for s in starts.tolist()]).long()


def batch_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """One seed per (run seed, step, micro-batch, process): the batch order survives a resume."""
    return ((seed * 1_000_003 + step) * 1_009 + micro) * 101 + rank
