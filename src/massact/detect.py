"""The massive-activation criterion, the two kinds of outlier it finds, and token kinds.

A dim that passes the criterion on a few tokens is a *massive activation* (the paper's: the first token,
delimiters); one that passes it on most tokens of an input is an *outlier feature* (LLM.int8's kind), a
different thing. What tells them apart is measured: the share of the tokens a dim passes on, in the block
where it passes on the most (`Thresholds.feature_share`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from massact.errors import MassactError

MASSIVE = "massive"  # a site on a few tokens
FEATURE = "outlier-feature"  # a dim that passes the criterion on most tokens
FEATURE_MIN_TOKENS = 4  # fewer tokens than this are never an outlier feature (a short prompt's BOS and delimiters)

FlaggedDims = torch.Tensor | Iterable[int]  # the dim of each flagged entry of one block

DELIMITERS = frozenset({".", ",", ";", ":", "!", "?", "\n", "\n\n", "...", "-", "—", "(", ")", '"', "'"})


@dataclass(frozen=True)
class Thresholds:
    """Paper criterion: |x| > `abs` and |x| >= `ratio` x the block's median |x|.

    `feature_share`: a dim that passes on more than this share of an input's tokens (and on at least
    `FEATURE_MIN_TOKENS` of them) in one block is an outlier feature, not a massive activation.
    """

    abs: float = 100.0  # |x| must exceed this
    ratio: float = 1000.0  # and reach this multiple of the block's median |x|
    feature_share: float = 0.5  # a dim passing on more than this share of tokens is an outlier feature

    def __post_init__(self) -> None:
        for name in ("abs", "ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
                raise MassactError(f"threshold {name}={value!r} must be a positive finite number")
        share = self.feature_share
        if not isinstance(share, (int, float)) or not 0.0 < share <= 1.0:
            raise MassactError(f"feature_share={share!r} must be a share of tokens in (0, 1]")

    def cutoff(self, median: float) -> float:
        """The magnitude an activation must reach in a block with this median."""
        return max(self.abs, self.ratio * median)

    def massive(self, magnitudes: torch.Tensor, median: torch.Tensor | float) -> torch.Tensor:
        """The criterion on tensors: True where |x| > abs and |x| >= ratio x median (broadcast).

        `median` may be a tensor (one per sequence, say, shaped to broadcast) so that no value
        leaves the device; a NaN median (no finite value) selects nothing.
        """
        return (magnitudes > self.abs) & (magnitudes >= self.ratio * median)

    def is_feature(self, hits: int | torch.Tensor, tokens: int | torch.Tensor) -> bool | torch.Tensor:
        """True when a dim passing the criterion on `hits` of `tokens` tokens (one block) is an outlier feature
        (ints, or tensors that broadcast: then a bool tensor, computed on their device)."""
        return (hits >= FEATURE_MIN_TOKENS) & (hits > self.feature_share * tokens)

    def to_json(self) -> dict:
        return {"abs": self.abs, "ratio": self.ratio, "feature_share": self.feature_share}

    @classmethod
    def from_json(cls, data: dict) -> Thresholds:
        share = float(data.get("feature_share", cls.feature_share))  # files written before it existed
        return cls(abs=float(data["abs"]), ratio=float(data["ratio"]), feature_share=share)


def dim_hits(flagged_dims: Iterable[FlaggedDims]) -> dict[int, int]:
    """dim -> the most tokens it passes the criterion on in any one block, from each block's flagged dims
    (one entry per flagged (token, dim), e.g. `BlockRecord.massive_dims`)."""
    most: dict[int, int] = {}
    for dims in flagged_dims:
        counts = Counter(dims.tolist() if isinstance(dims, torch.Tensor) else dims)
        for dim, count in counts.items():
            most[dim] = max(most.get(dim, 0), count)
    return dict(sorted(most.items()))


def feature_dims(flagged_dims: Iterable[FlaggedDims], tokens: int, thresholds: Thresholds) -> dict[int, float]:
    """The outlier features among the flagged dims of one input of `tokens` tokens: dim -> share of tokens."""
    hits = dim_hits(flagged_dims)
    return {dim: count / tokens for dim, count in hits.items() if thresholds.is_feature(count, tokens)}


def token_kind(text: str, position: int, special: bool = False) -> str:
    """'first' (position 0), 'delimiter' (punctuation or newline), 'special', or 'other'."""
    if position == 0:
        return "first"
    if special:
        return "special"
    stripped = text.strip(" \t")
    if stripped in DELIMITERS or (stripped and set(stripped) <= set("\n\r")):
        return "delimiter"
    return "other"
