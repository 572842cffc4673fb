"""Running maxima over any number of forwards: of each block output, and of each channel of named modules.

`BlockPeaks`: the largest finite |x| (and, if asked, token RMS) of each block output, and which held inf/NaN.
`ChannelMaxima`: the largest |x| of each channel of named modules' inputs or outputs (SmoothQuant's
statistic); `ChannelSquares`: their sum of x^2 and the tokens (llama.cpp's importance matrix). Both are one
`ChannelHook`, which leaves padding out. Cheap enough to leave on around a whole run: the statistics stay on
the model's device and are read back once. All only accumulate, module by module, so a model run block by
block needs nothing of them (no `HookSet.per_forward` state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from massact.capture.hooks import HookFn, HookSet, output_tensor
from massact.models.structure import Structure, in_features, is_linear


class BlockPeaks(HookSet):
    """Per block: the largest finite |x| (and token RMS, if asked) of its output, and whether it held inf/NaN."""

    def __init__(self, model: nn.Module, structure: Structure, token_rms: bool = False) -> None:
        super().__init__(model)
        self.structure = structure
        self.keep_rms = token_rms  # costs a float32 copy of each block output, so only when asked
        self._peak: dict[int, torch.Tensor] = {}
        self._rms: dict[int, torch.Tensor] = {}
        self._bad: dict[int, torch.Tensor] = {}
        self.dtype: torch.dtype | None = None  # the dtype of the block outputs themselves

    def _hook(self, index: int) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            x = output_tensor(output).detach()
            self.dtype = x.dtype
            peak = x.abs().nan_to_num(0.0, 0.0, 0.0).amax().float()
            bad = ~torch.isfinite(x).all()
            self._peak[index] = torch.maximum(self._peak[index], peak) if index in self._peak else peak
            if self.keep_rms:
                rms = x.float().pow(2).mean(-1).sqrt().nan_to_num(0.0, 0.0, 0.0).amax()
                self._rms[index] = torch.maximum(self._rms[index], rms) if index in self._rms else rms
            self._bad[index] = (self._bad[index] | bad) if index in self._bad else bad

        return hook

    def forward_hooks(self) -> Iterable[tuple[nn.Module, HookFn]]:
        return [(block, self._hook(i)) for i, block in enumerate(self.structure.blocks)]

    def peaks(self) -> tuple[list[float | None], list[int]]:
        """(largest finite |x| per block, None for a block that never ran; blocks whose output held inf/NaN)."""
        blocks = range(len(self.structure))
        peaks = [float(self._peak[i]) if i in self._peak else None for i in blocks]
        return peaks, [i for i in blocks if i in self._bad and bool(self._bad[i])]

    def token_rms(self) -> list[float | None]:
        """Per block: the largest RMS of one token's output (finite tokens only), None for a block that never ran
        (or when the monitor was not asked for `token_rms`)."""
        return [float(self._rms[i]) if i in self._rms else None for i in range(len(self.structure))]


class ChannelHook(HookSet):
    """Per named module, every token's channels (last dim) of its `input` or its `output`, padding left out: each
    call hands `add(name, rows)` a [tokens, channels] tensor. The one per-channel hook; subclasses accumulate."""

    def __init__(self, model: nn.Module, names: Iterable[str], where: Literal["input", "output"]) -> None:
        super().__init__(model)
        self.where = where
        self.modules = {name: model.get_submodule(name) for name in names}

    def add(self, name: str, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., channels] as [tokens, channels], without the padding the model's attention mask marks."""
        x = x.detach()
        mask = self.valid_mask(x.shape[0], x.shape[1], x.device) if x.dim() == 3 else None
        if mask is not None and not bool(mask.all()):
            return x[mask]
        return x.reshape(-1, x.shape[-1])

    def forward_hooks(self) -> Iterable[tuple[nn.Module, HookFn]]:
        if self.where != "output":
            return []
        return [(m, self._output_hook(n)) for n, m in self.modules.items()]

    def pre_hooks(self) -> Iterable[tuple[nn.Module, Callable]]:
        if self.where != "input":
            return []
        return [(m, self._input_hook(n)) for n, m in self.modules.items()]

    def _output_hook(self, name: str) -> HookFn:
        return lambda module, args, output: self.add(name, self._rows(output_tensor(output)))

    def _input_hook(self, name: str) -> Callable:
        return lambda module, args, kwargs: self.add(name, self._rows(args[0] if args else next(iter(kwargs.values()))))


class ChannelMaxima(ChannelHook):
    """Per named module: the running max |x| of each channel (last dim) of its `input` or its `output`.

    NaN counts as 0. Modules that never run report zeros when their width is known (the inputs of a
    Linear or Conv1D), and are left out otherwise.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], where: Literal["input", "output"]) -> None:
        super().__init__(model, names, where)
        self._maxima: dict[str, torch.Tensor] = {}

    def add(self, name: str, rows: torch.Tensor) -> None:
        if not rows.shape[0]:
            return
        peak = torch.nan_to_num(rows.abs().float().amax(0), nan=0.0)
        running = self._maxima.get(name)
        self._maxima[name] = peak if running is None else torch.maximum(running.to(peak.device), peak)

    @property
    def maxima(self) -> dict[str, torch.Tensor]:
        """Module name -> max |x| per channel, on the CPU, in the order the modules were named."""
        out = {}
        for name, module in self.modules.items():
            if name in self._maxima:
                out[name] = self._maxima[name].cpu()
            elif self.where == "input" and is_linear(module):
                out[name] = torch.zeros(in_features(module))
        return out


class ChannelSquares(ChannelHook):
    """Per named module: the running sum of x^2 of each channel (float64, on the input's device) and the tokens
    seen (llama.cpp's importance matrix statistic)."""

    def __init__(self, model: nn.Module, names: Iterable[str], where: Literal["input", "output"] = "input") -> None:
        super().__init__(model, names, where)
        self._sums2: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, rows: torch.Tensor) -> None:
        squares = rows.double().square().sum(0)
        self._sums2[name] = self._sums2[name].to(squares.device) + squares if name in self._sums2 else squares
        self._counts[name] = self._counts.get(name, 0) + rows.shape[0]

    @property
    def sums(self) -> dict[str, tuple[torch.Tensor, int]]:
        """Module name -> (sum of x^2 per channel on the CPU, tokens), for the modules that ran, in named order."""
        return {name: (self._sums2[name].cpu(), self._counts[name]) for name in self.modules if name in self._counts}


def linear_inputs(model: nn.Module) -> ChannelMaxima:
    """Per-input-channel max |x| at every Linear and Conv1D: SmoothQuant's `act_scales`."""
    return ChannelMaxima(model, [name for name, m in model.named_modules() if is_linear(m)], "input")
