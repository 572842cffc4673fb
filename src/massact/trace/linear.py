"""The Linear layer a sub-layer writes the residual stream with, and its weight as [out, in].

Generic over `nn.Linear` (weight stored [out, in]) and transformers' `Conv1D` (GPT-2 style, stored
[in, out]): callers always see `W[row = output dim, column = input channel]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def is_linear(module: nn.Module) -> bool:
    """An `nn.Linear` (or subclass) or a transformers `Conv1D`."""
    conv1d = _conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def out_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.weight.shape[1])  # Conv1D: [in, out]


def in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    return int(module.weight.shape[0])


@dataclass
class WriterLinear:
    """The last Linear of a sub-layer whose output size is the hidden size (e.g. an MLP's down-projection)."""

    name: str  # path relative to the model
    module: nn.Module

    @property
    def transposed(self) -> bool:
        """True when the stored weight is [in, out] (Conv1D)."""
        return not isinstance(self.module, nn.Linear)

    def matrix(self) -> torch.Tensor:
        """The weight as [out, in] (a view, no copy)."""
        weight = self.module.weight
        return weight.t() if self.transposed else weight

    def stored_index(self, row: int, column: int) -> tuple[int, int]:
        """Index into the stored `weight` parameter of W[row, column]."""
        return (column, row) if self.transposed else (row, column)

    def bias(self, row: int) -> float:
        bias = getattr(self.module, "bias", None)
        return float(bias.detach()[row]) if isinstance(bias, torch.Tensor) else 0.0


def find_writer_linear(sublayer: nn.Module | None, prefix: str | None, hidden_size: int) -> WriterLinear | None:
    """Within `sublayer`, the last Linear / Conv1D (in module order) whose output size is `hidden_size`."""
    if sublayer is None:
        return None
    found = None
    for name, module in sublayer.named_modules():
        if is_linear(module) and out_features(module) == hidden_size:
            found = (name, module)
    if found is None:
        return None
    name, module = found
    path = ".".join(part for part in (prefix, name) if part)
    return WriterLinear(name=path, module=module)
