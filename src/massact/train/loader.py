"""`massact train` checkpoints as models every command loads (registered with `massact.models.registry`)."""

from __future__ import annotations

from pathlib import Path

import torch

from massact.models.loading import LoadedModel, default_device, resolve_dtype
from massact.train.checkpoint import find_checkpoint, load_trained


def is_checkpoint(path: Path) -> bool:
    """True for a `massact train` checkpoint directory, or a run directory that holds one."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "state.json").is_file() and (path / "model.safetensors").is_file():
        return True
    return find_checkpoint(path) is not None


def load_checkpoint_model(
    path: Path,
    *,
    tokenizer: object | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    name: str | None = None,
    **_: object,
) -> LoadedModel:
    """The trained GPT-2 in `path` (a checkpoint or a run directory) with its own tokenizer unless one is given."""
    device = device or default_device()
    model, trained_tokenizer = load_trained(Path(path), device=device)
    return LoadedModel(
        model=model.to(resolve_dtype(dtype, device)),
        tokenizer=tokenizer or trained_tokenizer,
        name=name or str(path),
        source=str(path),
    )
