"""Every knob of a trace, with its default, checked before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from massact.data.corpus import DEFAULT_CORPUS
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.validate import at_least, given


@dataclass(frozen=True)
class TraceConfig:
    """What to trace and how to verify it.

    Sites: the `max_sites` largest massive (token, dim) sites of the prompt (only those on `token`
    when given), or the one `dim` names (on `token`, or on its most massive token); `block` forces
    the block whose update is explained. `top` entries are listed per site; `share` is the part of
    the jump whose fewest explaining entries are counted. With `verify`, those entries are zeroed,
    the sites and the perplexity on `samples` windows of `corpus` are measured, and the weights are
    restored bit for bit; with `risk`, the int8 risk table comes from the same windows.
    """

    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion that finds the sites
    add_special_tokens: bool = True  # tokenize the prompt with the tokenizer's special tokens (BOS, ...)
    token: int | None = None  # trace only sites on this token position
    dim: int | None = None  # trace this dim (on `token`, or on its most massive token)
    block: int | None = None  # explain this block's update (default: where the site first appears)
    max_sites: int = 4  # trace at most this many sites, largest first
    top: int = 10  # weight entries listed per site
    share: float = 0.9  # the part of the jump whose fewest explaining entries are counted
    verify: bool = True  # zero those entries, measure sites and perplexity, restore the weights
    risk: bool = True  # the int8 risk table, from the same windows
    corpus: str = DEFAULT_CORPUS  # corpus name or text file of the perplexity and risk windows
    samples: int = 8  # windows of `corpus`
    seq_len: int = 256  # tokens per window, the tokenizer's prefix (BOS) included
    batch_size: int = 4  # windows per forward pass
    seed: int = 0  # which windows are drawn
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself
    progress: bool = True  # progress lines on a terminal

    def __post_init__(self) -> None:
        if not isinstance(self.thresholds, Thresholds):
            raise MassactError("`thresholds` must be a massact.detect.Thresholds")
        for name in ("token", "dim", "block"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise MassactError(f"{given(name, value)}: must be 0 or more")
        for name, least in (("max_sites", 1), ("top", 1), ("samples", 1), ("seq_len", 2), ("batch_size", 1)):
            at_least(name, getattr(self, name), least)
        if not 0 < self.share <= 1:
            raise MassactError(f"`share={self.share}`: must be in (0, 1], e.g. 0.9")
        if not self.corpus:
            raise MassactError("`corpus` is empty; give a corpus name (e.g. shakespeare) or a text file")
