"""The configs of the two vision analyses: `ImageScanConfig` (image scan) and `FixRegMeanConfig`, checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field

from massact.detect import Thresholds
from massact.errors import MassactError
from massact.validate import at_least, given


@dataclass(frozen=True)
class ImageScanConfig:
    """What an image scan measures and keeps."""

    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion (|x| > abs and >= ratio x the median)
    top_k: int = 16  # largest activations kept per block
    keep: int | None = None  # keep this block's output of the first image (3D figure)
    keep_first_massive: bool = False  # keep the first massive block's output of the first image
    batch_size: int = 8  # images per forward pass
    num_images: int | None = None  # scan at most this many images, spread over the set
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself
    progress: bool = True  # a progress bar on a terminal

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise MassactError(f"`top_k={self.top_k}`: keep at least 1 activation per block")
        if not isinstance(self.batch_size, int):
            raise MassactError(f"`batch_size={self.batch_size!r}`: give a whole number")
        at_least("batch_size", self.batch_size)
        if self.num_images is not None:
            at_least("num_images", self.num_images)
        if self.keep is not None and self.keep < 0:
            raise MassactError(f"`keep={self.keep}`: give a block index (0 or more)")


@dataclass(frozen=True)
class FixRegMeanConfig:
    """Fix-Reg-Mean settings."""

    k: int = 5  # neighbours for the k-NN label agreement
    batch_size: int = 8  # images per forward pass
    samples: int | None = None  # use at most this many images for the means
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself

    def __post_init__(self) -> None:
        for name in ("k", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise MassactError(f"{given(name, value)}: give a whole number")
            at_least(name, value)
        if self.samples is not None:
            at_least("samples", self.samples)
