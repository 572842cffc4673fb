"""Training GPT-2- or LLaMA-shaped models of one attention design each, with the activation monitor on.

`run(TrainConfig(...), out) -> TrainResult`; `ModelConfig` is the model's shape and design, `get_preset(name)` a
named config, `VARIANTS` the registered designs. Importing this package registers its checkpoints with
`massact.models.registry`, so `load_model(RUN_DIR)` (and every command) loads a trained model. Importing it
imports nothing heavy: torch comes in when a name below is first used or a path is first checked.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from massact.models.registry import register_loader

if TYPE_CHECKING:  # the names below, for readers and the reference; at run time they load on first use
    from massact.train.config import ModelConfig, TrainConfig
    from massact.train.presets import PRESETS, get_preset
    from massact.train.runner import run
    from massact.train.trainer import TrainResult
    from massact.train.variants import VARIANTS

_LAZY = {
    "run": "massact.train.runner",
    "TrainConfig": "massact.train.config",
    "ModelConfig": "massact.train.config",
    "TrainResult": "massact.train.trainer",
    "get_preset": "massact.train.presets",
    "PRESETS": "massact.train.presets",
    "VARIANTS": "massact.train.variants",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'massact.train' has no attribute {name!r}")


def is_checkpoint(path: Path) -> bool:
    """True for a `massact train` checkpoint directory, or a run directory that holds one."""
    from massact.train.loader import is_checkpoint as check

    return check(path)


def load_checkpoint_model(path: Path, **options: object) -> object:
    """The trained model in `path` as a `LoadedModel` (see `massact.train.loader.load_checkpoint_model`)."""
    from massact.train.loader import load_checkpoint_model as load

    return load(path, **options)


register_loader("massact-train", is_checkpoint, load_checkpoint_model)

__all__ = [
    "PRESETS",
    "VARIANTS",
    "ModelConfig",
    "TrainConfig",
    "TrainResult",
    "get_preset",
    "is_checkpoint",
    "load_checkpoint_model",
    "run",
]
