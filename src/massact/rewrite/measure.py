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
    """Which modules return inf or NaN anywhere in their output, the first in call order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.bad: list[str] = []

    def forward_hooks(self):
        return [(m, self._hook(n)) for n, m in self.model.named_modules() if n]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            try:
                tensor = output_tensor(output)
            except TypeError:
                return
            if tensor.is_floating_point() and name not in self.bad and not bool(torch.isfinite(tensor).all()):
                self.bad.append(name)

        return hook
