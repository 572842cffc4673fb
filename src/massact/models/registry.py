"""Loaders for model formats that transformers does not know, registered by the packages that define them.

A package registers `(name, can_load, load)`: `can_load(path)` says whether a directory holds its
format, `load(path, **options)` returns a `LoadedModel`. `load_model` asks `find_loader(path)` first,
so it needs to know no format but transformers' own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Loader:
    """A registered format: its name, how to recognise it and how to load it."""

    name: str
    can_load: Callable[[Path], bool]
    load: Callable[..., Any]  # (path, *, tokenizer, dtype, device, ...) -> LoadedModel


_LOADERS: dict[str, Loader] = {}


def register_loader(name: str, can_load: Callable[[Path], bool], load: Callable[..., Any]) -> None:
    """Register (or replace) the loader called `name`."""
    _LOADERS[name] = Loader(name, can_load, load)


def find_loader(path: str | Path) -> Loader | None:
    """The first registered loader that recognises `path`, or None."""
    path = Path(path)
    for loader in _LOADERS.values():
        if loader.can_load(path):
            return loader
    return None
