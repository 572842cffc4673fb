"""Temporary weight edits that always put back the exact original values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from massact.errors import MassactError

EntryKey = tuple[str, tuple[int, ...]]  # (parameter name, index into the stored parameter)


def _unique(entries: Iterable[tuple[str, Iterable[int]]]) -> list[EntryKey]:
    return list(dict.fromkeys((name, tuple(int(i) for i in index)) for name, index in entries))


@contextmanager
def zeroed_entries(model: nn.Module, entries: Iterable[tuple[str, Iterable[int]]]) -> Iterator[list[EntryKey]]:
    """Set each (parameter name, index) of `model` to zero inside the block; restore the originals, bit for bit.

    The original values are saved before any entry changes, and written back on exit, also on error.
    """
    params = dict(model.named_parameters())
    keys = _unique(entries)
    for name, index in keys:
        if name not in params:
            raise MassactError(f"the model has no parameter {name!r}; was the trace made on another model?")
        shape = tuple(params[name].shape)
        if len(index) != len(shape) or any(not 0 <= i < s for i, s in zip(index, shape, strict=True)):
            raise MassactError(f"index {list(index)} is outside {name} of shape {list(shape)}")
    with torch.no_grad():
        saved = [params[name][index].clone() for name, index in keys]
        try:
            for name, index in keys:
                params[name][index] = 0
            yield keys
        finally:
            for (name, index), value in zip(keys, saved, strict=True):
                params[name][index] = value
