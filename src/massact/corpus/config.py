"""`CorpusConfig`: every knob of a corpus scan, with its default, checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field

from massact.detect import Thresholds
from massact.errors import MassactError
from massact.validate import at_least


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`shard` text "i/n" as (i, n): this run scans part i of n (0 <= i < n) of the drawn windows."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise MassactError(f"`shard={text!r}`: give i/n, e.g. 0/2 for the first of two halves") from None
    if count < 1 or not 0 <= index < count:
        raise MassactError(f"`shard={text!r}`: needs 0 <= i < n, e.g. 0/2 and 1/2")
    return index, count


@dataclass(frozen=True)
class CorpusConfig:
    """What one corpus scan reads and keeps."""

    samples: int = 64  # windows drawn from the corpus
    seq_len: int = 512  # tokens per window, the tokenizer's prefix (BOS) included
    batch_size: int = 8  # windows per forward pass
    seed: int = 0  # which windows are drawn
    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion (|x| > abs and >= ratio x the median)
    top_k: int = 16  # largest activations kept per block and window
    add_special_tokens: bool = True  # windows start as the tokenizer starts a text (its BOS)
    shard: tuple[int, int] | None = None  # (i, n): scan only part i of n of the drawn windows
    progress: bool = True  # a progress bar on a terminal
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself

    def __post_init__(self) -> None:
        for name in ("samples", "seq_len", "batch_size", "top_k"):
            at_least(name, getattr(self, name))
        if self.shard is not None:
            index, count = self.shard
            if count < 1 or not 0 <= index < count:
                raise MassactError(f"`shard={self.shard}`: needs 0 <= i < n")
            if count > self.samples:
                raise MassactError(f"`shard={self.shard}`: more parts than `samples={self.samples}`; use fewer")
