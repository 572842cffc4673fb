"""Temporary weight edits that hold whether a model runs in memory or block by block: `edited_parameters`, and a
tie undone for a while (`untied`), so that two tied modules can be edited apart."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from massact.models.offload import Edit, offload_of


@contextmanager
def edited_parameters(model: nn.Module, edits: Iterable[tuple[nn.Parameter, Edit]]) -> Iterator[None]:
    """Each parameter replaced by `edit(its tensor)` inside the block; the originals come back on exit, bit for bit.

    In memory the edit is applied at once. When `model` runs block by block, a parameter still on the meta
    device gets its edit as its block is read from the checkpoint, for every read inside the block.
    """
    offload = offload_of(model)
    originals: list[tuple[nn.Parameter, torch.Tensor]] = []
    registered: list[tuple[int, Edit]] = []
    try:
        with torch.no_grad():
            for parameter, edit in edits:
                if offload is not None and parameter.is_meta:
                    offload.edits.setdefault(id(parameter), []).append(edit)
                    registered.append((id(parameter), edit))
                    continue
                new = edit(parameter.data)
                if new is not parameter.data:
                    originals.append((parameter, parameter.data))
                    parameter.data = new
        yield
    finally:
        for parameter, original in reversed(originals):
            parameter.data = original
        for key, edit in registered:
            chain = offload.edits.get(key, [])  # type: ignore[union-attr]
            if edit in chain:
                chain.remove(edit)
            if not chain:
                offload.edits.pop(key, None)  # type: ignore[union-attr]


@contextmanager
def untied(model: nn.Module, owner: nn.Module, name: str) -> Iterator[nn.Parameter]:
    """`owner.<name>`, a parameter tied to another module's, as a parameter of its own inside the block, holding the
    same values (in memory the same storage; block by block read from the same checkpoint tensor), so that an edit
    of one leaves the other as it is. The tie comes back on exit."""
    shared = getattr(owner, name)
    own = nn.Parameter(shared.data, requires_grad=shared.requires_grad)
    offload = offload_of(model)
    if offload is not None and shared.is_meta:
        offload.read_like(own, owner, name, shared)
    setattr(owner, name, own)
    try:
        yield own
    finally:
        setattr(owner, name, shared)
        if offload is not None:
            offload.forget(own)
