"""The atlas loop: every model through every step; with a cache folder, each finished model is kept so a rerun
reuses it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from massact.atlas.config import AtlasConfig
from massact.atlas.context import Context
from massact.atlas.describe import describe
from massact.atlas.model_run import NOT_RUN, ModelRun, finished
from massact.atlas.registry import registered_steps
from massact.atlas.result import AtlasResult
from massact.errors import MassactError
from massact.models.loading import LoadedModel, load_model
from massact.models.memory import Workload
from massact.progress import say


def slug(model: str, taken: set[str]) -> str:
    """A folder name for `model` (a path's last part, a hub id with `--` for `/`), unique among `taken`."""
    base = Path(model.rstrip("/")).name if Path(model).exists() else model.replace("/", "--")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "model"
    name, index = base, 2
    while name in taken:
        name, index = f"{base}-{index}", index + 1
    taken.add(name)
    return name


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def analyse(model: str, slug: str, config: AtlasConfig, label: str) -> ModelRun:
    """One model's row and its analyses: every step that ran fills its fields; one that failed leaves them
    null, with the reason."""
    say(f"{label} loading {model} ...")
    try:
        loaded = load_model(
            model, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code,
            offload=config.offload, max_memory=config.max_memory, workload=_workload(config),
        )  # fmt: skip
    except Exception as exc:  # any model that does not load is a row, not an abort
        return ModelRun(slug, {"model": model, "status": "failed", "reason": _one_line(exc)})
    loaded.name = model
    try:
        return _steps(loaded, model, slug, config, label)
    finally:
        if loaded.offload is not None:  # its reader thread and temporary folder go with the model, not at exit
            loaded.offload.close()
            loaded.offload.checkpoint.close()
        del loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _workload(config: AtlasConfig) -> Workload:
    """The atlas's largest forward pass, for `offload="auto"`: a batch of corpus windows."""
    from massact.corpus import CorpusConfig

    return Workload(batch=min(CorpusConfig.batch_size, config.samples), tokens=config.seq_len)


def _steps(loaded: LoadedModel, model: str, slug: str, config: AtlasConfig, label: str) -> ModelRun:
    row: dict = {"model": model, "status": "ok", "folder": slug, "reasons": {}}
    try:
        row.update(describe(Context(loaded, config)))
    except Exception as exc:
        return ModelRun(slug, {"model": model, "status": "failed", "reason": _one_line(exc)})
    ctx = Context(loaded, config)
    steps = registered_steps()
    by_name = {step.name: step for step in steps}
    for name in config.steps:
        say(f"{label} {model}: {name} ...")
        try:
            row.update(by_name[name].run(ctx))
        except Exception as exc:  # a step that cannot run on this model: its fields are null, with the reason
            ctx.outputs.pop(name, None)
            _null(row, by_name[name].fields, f"{name}: {_one_line(exc)}")
            say(f"{label} {model}: {name} failed ({_one_line(exc)})")
    for step in steps:
        if step.name not in config.steps:
            _null(row, step.fields, f"{step.name}: {NOT_RUN}")
    row["execution"] = loaded.execution()
    return ModelRun(slug, row, ctx.outputs)


def _null(row: dict, fields: tuple[str, ...], reason: str) -> None:
    """The step's fields of `row` are null, each with `reason`."""
    for name in fields:
        row[name] = None
        row["reasons"][name] = reason


def run(models: Sequence[str], cache: Path | None = None, config: AtlasConfig | None = None) -> AtlasResult:
    """Every model of `models` through the atlas; `result.write(folder)` writes the table and each model's runs.

    `cache`: a folder that keeps each finished model (its `row.json` and run folders, as `write` lays them
    out), so a rerun with the same settings reuses it; `massact atlas --out DIR` uses DIR. Without it,
    the runs stay in memory. `run(models, config, cache)` is read the same way.
    """
    if isinstance(cache, AtlasConfig):
        cache, config = config, cache
    config = config or AtlasConfig()
    if not models:
        raise MassactError("give at least one model, e.g. `massact atlas default`")
    taken: set[str] = set()
    runs: list[ModelRun] = []
    try:
        for index, model in enumerate(models, 1):
            name = slug(model, taken)
            folder = Path(cache) / name if cache is not None else None
            label = f"[{index}/{len(models)}]"
            saved = finished(folder, model, config) if folder is not None else None
            if saved is not None:
                say(f"{label} {model}: finished earlier, reusing {folder}/")
                runs.append(ModelRun(name, saved, cached=folder))
                continue
            done = analyse(model, name, config, label)
            if done.ok and folder is not None:
                done.write(folder, config)
                done = ModelRun(name, done.row, cached=folder)
            runs.append(done)
    except KeyboardInterrupt:
        if cache is None:
            raise
        kept = sum(r.ok for r in runs)
        raise KeyboardInterrupt(
            f"{kept} of {len(models)} model(s) finished; {cache}/ keeps them and the same command reuses them"
        ) from None
    return AtlasResult(rows=[r.row for r in runs], config=config, runs=runs)
