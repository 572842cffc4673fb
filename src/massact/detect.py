"""The massive-activation criterion and token kinds."""

from __future__ import annotations

from dataclasses import dataclass

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
        """The magnitude an activation must exceed in a block with this median."""
        return max(self.abs, self.ratio * median)

    def is_massive(self, magnitude: float, median: float) -> bool:
        return magnitude > self.abs and magnitude >= self.ratio * median


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
