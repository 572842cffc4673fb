"""What the verification measures with hooks: per-module peaks, non-finite module outputs."""

from __future__ import annotations

import torch
from torch import nn

from massact.capture.hooks import HookSet, output_tensor


class ModulePeaks(HookSet):
    """The largest |output| and |input| of named modules."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__(model)
        self.modules = {n: model.get_submodule(n) for n in names}
        self.peak: dict[str, float] = {}

    def forward_hooks(self):
        return [(m, self._hook(n)) for n, m in self.modules.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            values = [output_tensor(output)] + [
                a for a in args[:1] if isinstance(a, torch.Tensor) and a.is_floating_point()
            ]
            peak = max(float(v.detach().abs().max()) for v in values if v.numel())
            self.peak[name] = max(self.peak.get(name, 0.0), peak)

        return hook


class Nonfinite(HookSet):
    """Which modules return inf or NaN anywhere in their output, in call order: batch by batch, the first first.

    Each forward pass keeps its own list (`per_forward`): block by block every batch reaches block i before
    any reaches block i + 1, so the lists are joined in batch order at the end, as one pass after another.
    """

    per_forward = ("_pass",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._passes: list[list[str]] = []  # one list per forward pass, in the order the passes started
        self._pass: list[str] | None = None

    @property
    def bad(self) -> list[str]:
        return list(dict.fromkeys(name for names in self._passes for name in names))

    def forward_hooks(self):
        modules = [(m, self._hook(n)) for n, m in self.model.named_modules() if n]
        return [*modules, (self.model, self._end)]

    def _end(self, module: nn.Module, args: tuple, output: object) -> None:
        self._pass = None  # the pass is over: the next one starts its own list

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if self._pass is None:  # the pass's first module (the embedding, in the first block's stage)
                self._pass = []
                self._passes.append(self._pass)
            try:
                tensor = output_tensor(output)
            except TypeError:
                return
            if tensor.is_floating_point() and name not in self._pass and not bool(torch.isfinite(tensor).all()):
                self._pass.append(name)

        return hook
