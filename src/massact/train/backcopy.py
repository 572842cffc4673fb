"""The Bigram-Backcopy task (Guo et al. 2024): sequences that grow attention sinks in small models.

Every sequence starts with BOS (token 0). Each next token follows a fixed random bigram table,
except right after one of a few trigger tokens, where it copies the token before the trigger.
An attention head is needed only after a trigger (to look one token back); everywhere else it
has nothing to do, and it learns to park its attention on BOS. Sequences are drawn from a seed
alone, so batches need no files and survive a resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from massact.errors import MassactError
from massact.validate import at_least

BOS = 0
VALIDATION_SEED = 987_654_321  # seed of the fixed validation / probe sequences (training seeds never reach it)


@dataclass(frozen=True)
class BackcopyTask:
    """The task's fixed parts: vocabulary (BOS included), trigger count, bigram table seed and sharpness."""

    vocab_size: int = 64
    triggers: int = 4
    concentration: float = 0.5  # Dirichlet parameter of each bigram row: smaller, sharper rows
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < self.triggers + 3:
            raise MassactError(f"vocab_size {self.vocab_size} is too small for {self.triggers} trigger tokens")
        at_least("triggers", self.triggers)
        if self.concentration <= 0:
            raise MassactError(f"concentration must be positive (got {self.concentration})")

    @cached_property
    def trigger_ids(self) -> torch.Tensor:
        """The trigger tokens: `triggers` ids among 1 .. vocab_size - 1, drawn from `seed`."""
        generator = torch.Generator().manual_seed(self.seed)
        return (torch.randperm(self.vocab_size - 1, generator=generator)[: self.triggers] + 1).sort().values

    @cached_property
    def bigram(self) -> torch.Tensor:
        """[vocab, vocab] next-token probabilities; BOS is never a next token (its row is unused)."""
        with torch.random.fork_rng(devices=[]):  # the gamma sampler takes no generator: seed a forked global one
            torch.manual_seed(self.seed + 1)
            gamma = torch._standard_gamma(torch.full((self.vocab_size, self.vocab_size - 1), self.concentration))
        table = torch.cat([torch.zeros(self.vocab_size, 1), gamma], dim=1)
        return table / table.sum(dim=1, keepdim=True)

    def is_trigger(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(ids, self.trigger_ids)

    def sample(self, count: int, length: int, seed: int) -> torch.Tensor:
        """`count` sequences of `length` tokens: BOS, a first non-trigger token, then bigram / back-copy steps."""
        if length < 2:
            raise MassactError(f"a Bigram-Backcopy sequence needs at least 2 tokens (got {length})")
        generator = torch.Generator().manual_seed(seed)
        start = torch.ones(self.vocab_size)
        start[BOS] = 0.0
        start[self.trigger_ids] = 0.0
        ids = torch.zeros(count, length, dtype=torch.long)
        ids[:, 1] = torch.multinomial(start.expand(count, -1), 1, generator=generator).squeeze(1)
        for i in range(2, length):
            drawn = torch.multinomial(self.bigram[ids[:, i - 1]], 1, generator=generator).squeeze(1)
            ids[:, i] = torch.where(self.is_trigger(ids[:, i - 1]), ids[:, i - 2], drawn)
        return ids

    def optimal_loss(self, ids: torch.Tensor) -> float:
        """The true process's expected next-token loss on `ids` (copies cost 0, bigram steps their row's entropy)."""
        rows = self.bigram[ids[:, 1:-1]]
        entropy = -(rows * rows.clamp_min(1e-30).log()).sum(-1)
        entropy = torch.where(self.is_trigger(ids[:, 1:-1]), torch.zeros_like(entropy), entropy)
        first = torch.log(torch.tensor(float(self.vocab_size - 1 - self.triggers)))
        return float((entropy.sum() + first * ids.shape[0]) / (ids.shape[0] * (ids.shape[1] - 1)))

    def token_names(self) -> list[str]:
        """`<bos>`, `t1`, ... with triggers named `T<id>`."""
        triggers = set(self.trigger_ids.tolist())
        return ["<bos>"] + [f"T{i}" if i in triggers else f"t{i}" for i in range(1, self.vocab_size)]

    def tokenizer(self):
        """A word-level tokenizer over `token_names()` (space-separated), so reports show readable tokens."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {name: i for i, name in enumerate(self.token_names())}
        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<bos>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        backend.decoder = decoders.WordPiece(prefix="##")
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>")


@dataclass
class BackcopyData:
    """Bigram-Backcopy sequences in the trainer's data interface (`batch`, `windows`, `tokenizer`)."""

    task: BackcopyTask

    @cached_property
    def tokenizer(self):
        return self.task.tokenizer()

    def batch(self, batch_size: int, block_size: int, seed: int) -> torch.Tensor:
        return self.task.sample(batch_size, block_size, seed)

    def windows(self, count: int, block_size: int) -> torch.Tensor:
        return self.task.sample(count, block_size, VALIDATION_SEED)

    def describe(self) -> str:
        task = self.task
        return (
            f"Bigram-Backcopy: {task.vocab_size} tokens (BOS 0), triggers {task.trigger_ids.tolist()}, "
            f"bigram rows Dirichlet({task.concentration}), table seed {task.seed}"
        )

    def check(self, config) -> None:
        if config.model.vocab_size != self.task.vocab_size:
            raise MassactError(f"the model has {config.model.vocab_size} tokens but the task {self.task.vocab_size}")
