"""The largest finite |x| of each block output, and which outputs held inf/NaN, over any number of forwards.

Cheap enough to leave on around a whole run: the running maxima stay on the model's device and are
read back once, by `peaks()`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from massact.capture.hooks import HookFn, HookSet, output_tensor
from massact.models.structure import Structure


class BlockPeaks(HookSet):
    """Per block: the largest finite |x| of its output and whether it held inf/NaN, across all forwards."""

    def __init__(self, model: nn.Module, structure: Structure) -> None:
        super().__init__(model)
        self.structure = structure
        self._peak: dict[int, torch.Tensor] = {}
        self._bad: dict[int, torch.Tensor] = {}
        self.dtype: torch.dtype | None = None  # the dtype of the block outputs themselves

    def _hook(self, index: int) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            x = output_tensor(output).detach()
            self.dtype = x.dtype
            peak = x.abs().nan_to_num(0.0, 0.0, 0.0).amax().float()
            bad = ~torch.isfinite(x).all()
            self._peak[index] = torch.maximum(self._peak[index], peak) if index in self._peak else peak
            self._bad[index] = (self._bad[index] | bad) if index in self._bad else bad

        return hook

    def forward_hooks(self) -> Iterable[tuple[nn.Module, HookFn]]:
        return [(block, self._hook(i)) for i, block in enumerate(self.structure.blocks)]

    def peaks(self) -> tuple[list[float | None], list[int]]:
        """(largest finite |x| per block, None for a block that never ran; blocks whose output held inf/NaN)."""
        blocks = range(len(self.structure))
        peaks = [float(self._peak[i]) if i in self._peak else None for i in blocks]
        return peaks, [i for i in blocks if i in self._bad and bool(self._bad[i])]
