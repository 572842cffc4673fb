"""`ScanConfig`: what a scan measures and keeps, checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field

from massact.detect import Thresholds
from massact.errors import MassactError


@dataclass(frozen=True)
class ScanConfig:
    """What a scan measures and keeps."""

    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion (|x| > abs and >= ratio x the median)
    top_k: int = 16  # largest activations kept per block
    keep: int | None = None  # keep this block's output (for the 3D figure)
    keep_peak: bool = False  # keep the output of the block of the largest massive activation (a second pass)
    add_special_tokens: bool = True  # tokenize a text prompt with the tokenizer's special tokens (BOS, ...)
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself

    def __post_init__(self) -> None:
        if not isinstance(self.thresholds, Thresholds):
            raise MassactError("`thresholds` must be a massact.detect.Thresholds")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise MassactError(f"`top_k={self.top_k}`: keep at least 1 activation per block")
        if self.keep is not None and (not isinstance(self.keep, int) or self.keep < 0):
            raise MassactError(f"`keep={self.keep}`: give a block index (0 or more)")
