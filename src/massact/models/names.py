"""Near misses: the names a mistyped model source was probably meant to be."""

from __future__ import annotations

import difflib
from pathlib import Path

DEFAULT_MODEL = "default"


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
