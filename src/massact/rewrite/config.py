"""Every knob of `massact rewrite`, validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from massact.errors import MassactError
from massact.residual import CHECK_QUANT_BLOCKS as CHECK_QUANT_BLOCKS  # read here by the command's checks
from massact.residual import TOLERANCE
from massact.validate import at_least, given

FP16_MAX = 65504.0
FP8_E4M3_MAX = 448.0
QUANT_SCHEMES = ("w8a8",)


def parse_rescale(text: str | float | None) -> str | float | None:
    """`auto`, a positive factor (given as a number or as text), or None (`none` / empty)."""
    if isinstance(text, str):
        if text.strip().lower() in ("", "none"):
            return None
        if text.strip().lower() == "auto":
            return "auto"
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise MassactError(f"{given('rescale', text)}: give 'auto' or a positive factor such as 0.25") from None
    if not math.isfinite(value) or value <= 0:
        raise MassactError(f"{given('rescale', text)}: the factor must be a positive number such as 0.25")
    return value


@dataclass(frozen=True)
class RewriteConfig:
    """Which exact rewrites to apply, and how they are checked."""

    rescale: str | float | None = None  # "auto", a factor, or None
    headroom: float = 0.5  # auto: largest module output at most this fraction of the float16 maximum
    smooth: float | None = None  # SmoothQuant alpha, or None
    rotate: bool = False  # fold an orthogonal rotation of the residual stream (randomized Hadamard where one exists)
    seed: int = 0  # seed of the rotation
    check_quant: str | None = None  # "w8a8": quantize both models with a real int8 library
    tolerance: float = TOLERANCE  # largest relative change of the float32 logits accepted as exact
    batch_size: int = 4  # windows per forward pass
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself
    progress: bool = True  # progress lines on a terminal

    def __post_init__(self) -> None:
        if self.rescale is not None and self.rescale != "auto":
            object.__setattr__(self, "rescale", parse_rescale(self.rescale))
        if self.rescale is None and self.smooth is None and not self.rotate:
            raise MassactError(
                "give a rewrite: `rescale` ('auto' or a factor), `smooth` (an alpha) and/or `rotate=True`"
            )
        if self.smooth is not None and not 0.0 <= self.smooth <= 1.0:
            raise MassactError(f"{given('smooth', self.smooth)}: alpha must be between 0 and 1 (SmoothQuant uses 0.5)")
        if self.smooth is not None and self.rotate:
            raise MassactError(
                "`smooth` and `rotate=True` together are not supported: the rotation mixes the smoothed channels"
            )
        if not 0.0 < self.headroom <= 1.0:
            raise MassactError(f"{given('headroom', self.headroom)}: a fraction of the float16 maximum in (0, 1]")
        if self.check_quant is not None:
            name = self.check_quant.strip().lower()
            if name not in QUANT_SCHEMES:
                raise MassactError(f"{given('check_quant', self.check_quant)}: use {', '.join(QUANT_SCHEMES)}")
            object.__setattr__(self, "check_quant", name)
        at_least("batch_size", self.batch_size)
        if not self.tolerance > 0:
            raise MassactError(f"{given('tolerance', self.tolerance)}: must be positive")

    @property
    def names(self) -> list[str]:
        """The rewrites in the order they are applied."""
        return [
            n
            for n, on in (
                ("rotate", self.rotate),
                ("smooth", self.smooth is not None),
                ("rescale", self.rescale is not None),
            )
            if on
        ]
