"""The atlas loop: every model through every step, each finished model saved so a rerun skips it."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch

from massact.atlas.config import AtlasConfig
from massact.atlas.result import AtlasResult
from massact.atlas.steps import STEP_FIELDS, STEP_FUNCTIONS, Context, describe
from massact.errors import MassactError
from massact.models.loading import load_model
from massact.outputs import to_json_text
from massact.progress import say

ROW_JSON = "row.json"
NOT_RUN = "not run (--steps)"


def slug(model: str, taken: set[str]) -> str:
    """A folder name for `model` (a path's last part, a hub id with `--` for `/`), unique among `taken`."""
    base = Path(model.rstrip("/")).name if Path(model).exists() else model.replace("/", "--")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "model"
    name, index = base, 2
    while name in taken:
        name, index = f"{base}-{index}", index + 1
    taken.add(name)
    return name


def _finished(folder: Path, model: str, config: AtlasConfig) -> dict | None:
    """The saved row of a model finished by an earlier run with the same settings, else None.

    A row with a step that failed is not finished: a rerun tries that model again.
    """
    path = folder / ROW_JSON
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if saved.get("model") != model or saved.get("config") != config.to_json():
        return None
    row = saved.get("row") or {}
    failed = [why for why in (row.get("reasons") or {}).values() if not why.endswith(NOT_RUN)]
    return None if failed else row


def _save_row(folder: Path, model: str, config: AtlasConfig, row: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{ROW_JSON}.partial"
    tmp.write_text(to_json_text({"model": model, "config": config.to_json(), "row": row}) + "\n", encoding="utf-8")
    os.replace(tmp, folder / ROW_JSON)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def analyse(model: str, folder: Path, config: AtlasConfig, label: str) -> dict:
    """One model's row: every step that ran fills its fields; one that failed leaves them null, with the reason."""
    say(f"{label} loading {model} ...")
    try:
        loaded = load_model(model, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code)
    except Exception as exc:  # any model that does not load is a row, not an abort
        return {"model": model, "status": "failed", "reason": _one_line(exc)}
    loaded.name = model
    row: dict = {"model": model, "status": "ok", "folder": folder.name, "reasons": {}}
    try:
        row.update(describe(Context(loaded, config, folder)))
    except Exception as exc:
        return {"model": model, "status": "failed", "reason": _one_line(exc)}
    ctx = Context(loaded, config, folder)
    for step in config.steps:
        say(f"{label} {model}: {step} ...")
        try:
            row.update(STEP_FUNCTIONS[step](ctx))
        except Exception as exc:  # a step that cannot run on this model: its fields are null, with the reason
            for name in STEP_FIELDS[step]:
                row[name] = None
                row["reasons"][name] = f"{step}: {_one_line(exc)}"
            say(f"{label} {model}: {step} failed ({_one_line(exc)})")
    for step in set(STEP_FIELDS) - set(config.steps):
        for name in STEP_FIELDS[step]:
            row[name] = None
            row["reasons"][name] = f"{step}: {NOT_RUN}"
    del loaded, ctx
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def run(models: list[str], config: AtlasConfig, out: Path | None = None) -> AtlasResult:
    """Every model of `models` through the atlas; with `out`, models finished by an earlier run are reused."""
    if not models:
        raise MassactError("give at least one model, e.g. `massact atlas default`")
    with tempfile.TemporaryDirectory(prefix="massact-atlas-") as scratch:
        root = Path(out) if out is not None else Path(scratch)
        taken: set[str] = set()
        rows = []
        try:
            for index, model in enumerate(models, 1):
                folder = root / slug(model, taken)
                label = f"[{index}/{len(models)}]"
                saved = _finished(folder, model, config) if out is not None else None
                if saved is not None:
                    say(f"{label} {model}: finished earlier, reusing {folder}/")
                    rows.append(saved)
                    continue
                row = analyse(model, folder, config, label)
                if row["status"] == "ok" and out is not None:
                    _save_row(folder, model, config, row)
                rows.append(row)
        except KeyboardInterrupt:
            if out is None:
                raise
            finished = sum(row["status"] == "ok" for row in rows)
            raise KeyboardInterrupt(
                f"{finished} of {len(models)} model(s) finished; {out}/ keeps them and the same command reuses them"
            ) from None
    return AtlasResult(rows=rows, config=config)
