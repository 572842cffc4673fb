"""Checkpoints: weights and optimizer state as safetensors, everything else as JSON.

A checkpoint is a directory (`model.safetensors`, `optimizer.safetensors`, `state.json`,
`config.json`, `tokenizer.json`). It is written next to the old one and swapped in with a
rename, so an interrupted run always finds its last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from massact.errors import MassactError
from massact.outputs import restore_non_finite, write_json
from massact.train.build import build_model
from massact.train.config import ModelConfig, TrainConfig

CHECKPOINT = "checkpoint"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}


def _optimizer_file(index: int) -> str:
    return f"optimizer{index or ''}.safetensors"


def save_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizers: list, schedulers: list, state: dict, tokenizer
) -> Path:
    """Write `run_dir/checkpoint` atomically. `state` holds step, config and logs (JSON).

    Optimizer i's tensors go to `optimizer.safetensors` (i = 0) or `optimizer<i>.safetensors`; its
    param groups and its scheduler's state to `state.json` ("optimizers").
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / CHECKPOINT
    staging = run_dir / f".{CHECKPOINT}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
    saved = []
    for index, (optimizer, scheduler) in enumerate(zip(optimizers, schedulers, strict=True)):
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(staging / _optimizer_file(index)))
        saved.append({"param_groups": groups, "scheduler": scheduler.state_dict()})
    write_json(staging / "config.json", model_config_json(model))
    write_json(staging / "state.json", {**state, "optimizers": saved})
    tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
    old = run_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def model_config_json(model: torch.nn.Module) -> dict:
    """config.json: transformers' `LlamaConfig` for a LLaMA-shaped `default` model (the folder then loads with
    `LlamaForCausalLM.from_pretrained`), else massact's own type; massact's config under "massact" in both."""
    config = model.config
    own = {"massact": config.to_dict()}
    if config.arch == "llama" and config.attention == "default":
        return {**model.hf_config(), **own}
    return {"model_type": f"massact-{config.arch}", **own}


def read_model_config(checkpoint: Path) -> ModelConfig:
    """The `ModelConfig` of a checkpoint (also of one written before configs were nested under "massact")."""
    data = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    return ModelConfig.from_dict(data.get("massact", data))


def find_checkpoint(run_dir: Path) -> Path | None:
    """The last complete checkpoint of `run_dir` (also one left mid-swap by an interruption)."""
    for name in (CHECKPOINT, f".{CHECKPOINT}.old"):
        path = run_dir / name
        if (path / "state.json").is_file() and (path / "model.safetensors").is_file():
            return path
    return None


def read_state(checkpoint: Path) -> dict:
    """state.json, with the losses and measures a diverged run wrote as "nan" / "inf" read back as floats."""
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    for key in ("val_log", "monitor_rows"):
        if key in state:
            state[key] = restore_non_finite(state[key])
    return state


def config_differences(saved: dict, wanted: TrainConfig) -> list[str]:
    """The settings where a saved run's config differs from `wanted` (e.g. ['n_layer 4 != 6'])."""
    want = wanted.to_dict()
    saved = TrainConfig.from_dict(saved).to_dict() if saved else saved  # settings added since: their defaults
    diffs = []
    for key in sorted(set(saved) | set(want)):
        a, b = saved.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{k} {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key} {a!r} != {b!r}")
    return diffs


def load_checkpoint(
    checkpoint: Path, model: torch.nn.Module, optimizers: list, schedulers: list, config: TrainConfig
) -> dict:
    """Restore model, optimizer and scheduler in place from `checkpoint`; returns its state dict."""
    state = read_state(checkpoint)
    diffs = config_differences(state.get("config", {}), config)
    if diffs:
        raise MassactError(
            f"{checkpoint} was trained with another config ({'; '.join(diffs[:3])}); "
            "resume with the same preset and options, or choose another `run_dir`"
        )
    load_model(model, str(checkpoint / "model.safetensors"), device=str(next(model.parameters()).device))
    saved = state.get("optimizers") or [{"param_groups": state["param_groups"], "scheduler": state["scheduler"]}]
    for index, (optimizer, scheduler, entry) in enumerate(zip(optimizers, schedulers, saved, strict=True)):
        tensors = load_file(str(checkpoint / _optimizer_file(index)))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, entry["param_groups"]))
        scheduler.load_state_dict(entry["scheduler"])
    return state


def load_trained(path: Path, device: str = "cpu") -> tuple[torch.nn.Module, object]:
    """A trained model and its tokenizer from a checkpoint directory (or a run directory holding one)."""
    from massact.train.data import load_tokenizer

    path = Path(path)
    checkpoint = path if (path / "state.json").is_file() else find_checkpoint(path)
    if checkpoint is None:
        raise MassactError(f"{path}: no massact training checkpoint here (no state.json / model.safetensors)")
    config = read_model_config(checkpoint)
    weights = str(checkpoint / "model.safetensors")
    with safe_open(weights, framework="pt"):  # a damaged file fails here, before a model is built for it
        pass
    model = build_model(config)
    load_model(model, weights, device=device)
    return model.to(device).eval(), load_tokenizer(checkpoint / "tokenizer.json")
