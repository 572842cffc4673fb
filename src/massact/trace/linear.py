"""The weight matrix a sub-layer writes the residual stream with, always seen as W[out, in].

Three storages, one view: an `nn.Linear` (weight stored [out, in]); transformers' `Conv1D` (GPT-2
style, stored [in, out]); and one expert of a fused mixture-of-experts module, a slice of a 3-D
parameter stored [expert, out, in] (or [expert, in, out] when the module says `is_transposed`).
Callers see `W[row = output dim, column = input channel]` and the index into the stored parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from massact.models.structure import is_linear, out_features

__all__ = [
    "ExpertMatrix",
    "NormGain",
    "WriterLinear",
    "WriterMatrix",
    "find_writer_linear",
    "is_linear",
    "out_features",
]


@dataclass
class WriterLinear:
    """The last Linear of a sub-layer whose output size is the hidden size (e.g. an MLP's down-projection)."""

    name: str  # path relative to the model
    module: nn.Module
    expert: int | None = None  # only fused expert slices have one

    @property
    def parameter(self) -> str:
        return f"{self.name}.weight"

    @property
    def transposed(self) -> bool:
        """True when the stored weight is [in, out] (Conv1D)."""
        return not isinstance(self.module, nn.Linear)

    def matrix(self) -> torch.Tensor:
        """The weight as [out, in] (a view, no copy)."""
        weight = self.module.weight
        return weight.t() if self.transposed else weight

    def stored_index(self, row: int, column: int) -> tuple[int, ...]:
        """Index into the stored parameter of W[row, column]."""
        return (column, row) if self.transposed else (row, column)

    def bias(self, row: int) -> float:
        bias = getattr(self.module, "bias", None)
        return float(bias.detach()[row]) if isinstance(bias, torch.Tensor) else 0.0


@dataclass
class ExpertMatrix:
    """Expert `expert`'s down-projection inside a fused experts module, a slice of a 3-D parameter."""

    name: str  # path of the experts module relative to the model
    module: nn.Module
    expert: int
    attribute: str = "down_proj"

    @property
    def parameter(self) -> str:
        return f"{self.name}.{self.attribute}"

    @property
    def transposed(self) -> bool:
        """True when the stored slice is [in, out]."""
        return bool(getattr(self.module, "is_transposed", False))

    def matrix(self) -> torch.Tensor:
        """The expert's weight as [out, in] (a view, no copy)."""
        weight = getattr(self.module, self.attribute)[self.expert]
        return weight.t() if self.transposed else weight

    def stored_index(self, row: int, column: int) -> tuple[int, ...]:
        return (self.expert, column, row) if self.transposed else (self.expert, row, column)

    def bias(self, row: int) -> float:
        bias = getattr(self.module, f"{self.attribute}_bias", None)
        return float(bias.detach()[self.expert, row]) if isinstance(bias, torch.Tensor) else 0.0


@dataclass
class NormGain:
    """The elementwise gain of a norm that takes a sub-layer's output (a sandwich norm): one entry per dim."""

    name: str  # path of the norm relative to the model
    module: nn.Module
    expert: int | None = None

    @property
    def parameter(self) -> str:
        return f"{self.name}.weight"

    def bias(self, row: int) -> float:
        bias = getattr(self.module, "bias", None)
        return float(bias.detach()[row]) if isinstance(bias, torch.Tensor) else 0.0

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """`x` normalized the way the norm does before its gain: centred first when it has a bias (LayerNorm)."""
        eps = float(getattr(self.module, "eps", getattr(self.module, "variance_epsilon", 1e-6)))
        if getattr(self.module, "bias", None) is not None:
            x = x - x.mean()
        return x / torch.sqrt((x * x).mean() + eps)


WriterMatrix = WriterLinear | ExpertMatrix | NormGain


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
