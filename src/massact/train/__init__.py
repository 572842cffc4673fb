"""Training GPT-2 with default, sink or bias attention, with the activation monitor on.

Importing this package registers its checkpoints with `massact.models.registry`, so `load_model(RUN_DIR)`
(and every command) loads a trained model. The registration itself imports nothing heavy: torch comes
in when a path is first checked.
"""

from __future__ import annotations

from pathlib import Path

from massact.models.registry import register_loader


def is_checkpoint(path: Path) -> bool:
    """True for a `massact train` checkpoint directory, or a run directory that holds one."""
    from massact.train.loader import is_checkpoint as check

    return check(path)


def load_checkpoint_model(path: Path, **options: object) -> object:
    """The trained GPT-2 in `path` as a `LoadedModel` (see `massact.train.loader.load_checkpoint_model`)."""
    from massact.train.loader import load_checkpoint_model as load

    return load(path, **options)


register_loader("massact-train", is_checkpoint, load_checkpoint_model)

__all__ = ["is_checkpoint", "load_checkpoint_model"]
