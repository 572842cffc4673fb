"""The --out folder of a rewrite: never one that already holds a model massact did not write there."""

from __future__ import annotations

from pathlib import Path

from massact.errors import MassactError
from massact.outputs import read_marker
from massact.validate import given

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "tokenizer.json",
)


def check_model_folder(out: Path) -> None:
    """Refuse an --out folder holding model files that no earlier massact run wrote."""
    out = Path(out)
    if not out.is_dir():
        return
    marker = read_marker(out) or {"files": []}
    ours = set(marker["files"])
    foreign = [name for name in MODEL_FILES if (out / name).exists() and name not in ours]
    if foreign:
        raise MassactError(
            f"{given('out', str(out))}: holds another model ({foreign[0]}); give an empty folder or one an earlier "
            "rewrite wrote"
        )
