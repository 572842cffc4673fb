"""The massive-activation criterion and token kinds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from massact.errors import MassactError

DELIMITERS = frozenset({".", ",", ";", ":", "!", "?", "\n", "\n\n", "...", "-", "—", "(", ")", '"', "'"})


@dataclass(frozen=True)
class Thresholds:
    """Paper criterion: |x| > `abs` and |x| >= `ratio` x the block's median |x|."""

    abs: float = 100.0
    ratio: float = 1000.0

    def __post_init__(self) -> None:
        for name in ("abs", "ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
                raise MassactError(f"threshold {name}={value!r} must be a positive finite number")

    def cutoff(self, median: float) -> float:
        """The magnitude an activation must reach in a block with this median."""
        return max(self.abs, self.ratio * median)

    def massive(self, magnitudes: torch.Tensor, median: torch.Tensor | float) -> torch.Tensor:
        """The criterion on tensors: True where |x| > abs and |x| >= ratio x median (broadcast).

        `median` may be a tensor (one per sequence, say, shaped to broadcast) so that no value
        leaves the device; a NaN median (no finite value) selects nothing.
        """
        return (magnitudes > self.abs) & (magnitudes >= self.ratio * median)

    def to_json(self) -> dict:
        return {"abs": self.abs, "ratio": self.ratio}

    @classmethod
    def from_json(cls, data: dict) -> Thresholds:
        return cls(abs=float(data["abs"]), ratio=float(data["ratio"]))


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
