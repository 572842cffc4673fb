"""Whether a run's dtype can hold the activations it measured: one check and one warning for every command.

float16 holds at most 65,504. A model whose block outputs exceed it gives inf, then NaN, in float16;
a float32 or bfloat16 run that measures such a peak says so too, since the same model would overflow
in float16. The warning names the block and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.markup import escape

from massact.format import fmt_activation

if TYPE_CHECKING:
    from massact.capture.peaks import BlockPeaks

FLOAT16_MAX = 65504.0
FIX = "rerun with --dtype bfloat16 (or float32), or rescale the model for float16 with `massact rewrite --rescale auto`"


def dtype_name(dtype: torch.dtype | str) -> str:
    """`torch.float16` -> "float16"."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Precision:
    """The run's dtype, the measured peak |x| of the block outputs and the blocks whose output held inf/NaN."""

    dtype: str
    peak: float | None  # largest finite |x| of any block output (None: nothing finite measured)
    peak_block: int | None
    nonfinite_blocks: tuple[int, ...] = ()

    @classmethod
    def measure(cls, dtype: torch.dtype | str, peaks: Sequence[float | None], nonfinite_blocks: Sequence[int]):
        """From per-block peaks (None where a block had nothing finite) and the blocks that held inf/NaN."""
        finite = [(p, i) for i, p in enumerate(peaks) if p is not None and math.isfinite(p)]
        peak, block = max(finite, default=(None, None))
        return cls(dtype_name(dtype), peak, block, tuple(sorted(set(nonfinite_blocks))))

    @classmethod
    def from_peaks(cls, monitor: BlockPeaks) -> Precision:
        """From a `BlockPeaks` monitor that watched the run's forwards (its dtype: the block outputs' own)."""
        block_peaks, nonfinite = monitor.peaks()
        dtype = monitor.dtype or next(monitor.model.parameters()).dtype
        return cls.measure(dtype, block_peaks, nonfinite)

    @property
    def overflow_block(self) -> int | None:
        """The first block whose output held inf/NaN."""
        return self.nonfinite_blocks[0] if self.nonfinite_blocks else None

    @property
    def exceeds_float16(self) -> bool:
        """Whether the activations outgrow float16: a peak above 65,504, or inf/NaN in a float16 run (an overflow)."""
        overflowed = self.dtype == "float16" and bool(self.nonfinite_blocks)
        return overflowed or (self.peak is not None and self.peak > FLOAT16_MAX)

    @property
    def warning(self) -> str | None:
        """One paragraph: what overflowed or would overflow, where, and the fix; None when the dtype holds the run."""
        peak = f"{fmt_activation(self.peak)} at block {self.peak_block}" if self.peak is not None else "none"
        if self.overflow_block is not None:
            blocks = ", ".join(map(str, self.nonfinite_blocks))
            if self.dtype == "float16":
                return (
                    f"float16 overflow: inf/NaN in the output of blocks {blocks} (first block {self.overflow_block}; "
                    f"float16 holds at most 65,504; largest finite value measured: {peak}), so every result "
                    f"computed from them (perplexity, ratios, figures) is inf or NaN. Fix: {FIX}."
                )
            fix = "check the model's weights and inputs" if self.dtype == "float32" else "try --dtype float32"
            return (
                f"inf/NaN in the output of blocks {blocks} ({self.dtype}); results computed from them are "
                f"inf or NaN: {fix}."
            )
        if self.exceeds_float16:
            return (
                f"the peak activation, {peak}, exceeds float16's largest value (65,504): this model gives inf/NaN "
                f"in float16 (this run is {self.dtype}). For float16, rescale it with `massact rewrite --rescale "
                "auto`, or run in bfloat16 or float32."
            )
        return None

    def to_json(self) -> dict:
        return {
            "dtype": self.dtype,
            "peak": self.peak,
            "peak_block": self.peak_block,
            "float16_max": FLOAT16_MAX,
            "exceeds_float16": self.exceeds_float16,
            "nonfinite_blocks": list(self.nonfinite_blocks),
            "overflow_block": self.overflow_block,
            "warning": self.warning,
        }

    def show(self, console: Console) -> None:
        """The warning on the terminal, in red; nothing when there is none."""
        if self.warning:
            console.print(f"[bold red]precision:[/] {escape(self.warning)}", highlight=False, soft_wrap=True)

    def markdown(self) -> list[str]:
        """Report lines: the warning as a paragraph (with a blank line after), or nothing."""
        return [f"**Precision.** {_md(self.warning)}", ""] if self.warning else []


def _md(text: str) -> str:
    return text.replace("|", "\\|")
