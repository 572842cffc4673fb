"""Temporary weight edits that always put back the exact original values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from massact.errors import MassactError
from massact.models.edits import edited_parameters
from massact.models.offload import Edit

EntryKey = tuple[str, tuple[int, ...]]  # (parameter name, index into the stored parameter)


def _unique(entries: Iterable[tuple[str, Iterable[int]]]) -> list[EntryKey]:
    return list(dict.fromkeys((name, tuple(int(i) for i in index)) for name, index in entries))


def _zeroing(indices: list[tuple[int, ...]]) -> Edit:
    """An edit that returns a copy of its tensor with the entries at `indices` set to zero."""
    where = tuple(torch.tensor(column) for column in zip(*indices, strict=True))

    def edit(tensor: torch.Tensor) -> torch.Tensor:
        zeroed = tensor.clone()
        zeroed[tuple(i.to(tensor.device) for i in where)] = 0
        return zeroed

    return edit


@contextmanager
def zeroed_entries(model: nn.Module, entries: Iterable[tuple[str, Iterable[int]]]) -> Iterator[list[EntryKey]]:
    """Set each (parameter name, index) of `model` to zero inside the block; restore the originals, bit for bit.

    Each edited parameter is replaced by a zeroed copy (`edited_parameters`; block by block, the copy is made
    as its block is read) and the original tensor comes back on exit, also on error. The block runs without
    gradients.
    """
    params = dict(model.named_parameters())
    keys = _unique(entries)
    by_parameter: dict[str, list[tuple[int, ...]]] = {}
    for name, index in keys:
        if name not in params:
            raise MassactError(f"the model has no parameter {name!r}; was the trace made on another model?")
        shape = tuple(params[name].shape)
        if len(index) != len(shape) or any(not 0 <= i < s for i, s in zip(index, shape, strict=True)):
            raise MassactError(f"index {list(index)} is outside {name} of shape {list(shape)}")
        by_parameter.setdefault(name, []).append(index)
    edits = [(params[name], _zeroing(indices)) for name, indices in by_parameter.items()]
    with torch.no_grad(), edited_parameters(model, edits):
        yield keys
