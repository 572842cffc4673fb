"""massact: find, measure, explain and neutralize massive activations in transformer models.

>>> from massact import load_model, scan
>>> result = scan(load_model("default"))          # bundled SmolLM2-135M-Instruct
>>> result.summary["dims"], result.summary["first_block"]

The names below are imported on first use, so `import massact` (and `massact --help`) does not wait
for torch, transformers or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import massact.train  # noqa: F401 (registers `massact train` checkpoints as models `load_model` reads)
from massact.errors import MassactError

if TYPE_CHECKING:
    from massact.capture.stats import capture_block_stats, summarize_hidden
    from massact.detect import Thresholds
    from massact.models.loading import LoadedModel, load_model
    from massact.models.structure import Structure, find_structure
    from massact.scan import ScanResult, scan

__version__ = "0.1.0"

_LAZY = {
    "LoadedModel": "massact.models.loading",
    "ScanResult": "massact.scan",
    "Structure": "massact.models.structure",
    "Thresholds": "massact.detect",
    "capture_block_stats": "massact.capture.stats",
    "find_structure": "massact.models.structure",
    "load_model": "massact.models.loading",
    "summarize_hidden": "massact.capture.stats",
}
__all__ = [
    "LoadedModel",
    "MassactError",
    "ScanResult",
    "Structure",
    "Thresholds",
    "capture_block_stats",
    "find_structure",
    "load_model",
    "scan",
    "summarize_hidden",
]


_CALLABLE_PACKAGES = {"scan"}  # packages that are also their own short form: `massact.scan(loaded, prompt)`


def __getattr__(name: str) -> object:
    """Import a public name's module when the name is first used."""
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(f"massact.{name}")  # importing sets the attribute on this package too
    if name not in _LAZY:
        raise AttributeError(f"module 'massact' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _CALLABLE_PACKAGES)
