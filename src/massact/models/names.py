"""Model sources as typed: whether one names a local path, one that is missing, and its near misses."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from massact.errors import MassactError

DEFAULT_MODEL = "default"


def looks_like_path(source: str) -> bool:
    """True when `source` names a local file or folder rather than a hub id."""
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.endswith(".gguf")
        or os.path.exists(source)
        or source.count("/") > 1
    )


def check_local_source(source: str) -> None:
    """Refuse a source that names a local path which does not exist: cheap, so commands check it first."""
    if source != DEFAULT_MODEL and looks_like_path(source) and not Path(source).expanduser().exists():
        raise MassactError(f"{source}: no such file or directory; give a model directory, a .gguf file or a hub id")


def near_misses(source: str) -> list[str]:
    """Names close to a mistyped `source`: 'default', and files or folders next to where it points."""
    candidates = [DEFAULT_MODEL]
    parent = Path(source).expanduser().parent
    try:
        for entry in sorted(parent.iterdir())[:500]:
            if entry.is_dir() or entry.suffix == ".gguf":
                candidates.append(str(entry) if str(parent) != "." else entry.name)
    except OSError:
        pass
    return difflib.get_close_matches(source, candidates, n=2, cutoff=0.6)
