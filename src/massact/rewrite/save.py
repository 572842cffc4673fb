"""Save a planned rewrite as a plain transformers folder: in memory with `save_pretrained`, or block by block.

In memory the plan is committed into a copy of the model and `save_pretrained` writes it. Block by block the
model is never whole: the files `save_pretrained` would write are laid out first from the tensors' shapes
(the same state dict, tied weights and conversions back to the checkpoint's names, the same 50 GB shards),
then each part of the model (the trunk, the embedding, every block, the head) is read from the checkpoint,
rewritten by the plan, converted, written into its place in the files and freed. The tensors are those
`save_pretrained` writes for the in-memory rewrite, bit for bit; over 50 GB the shard boundaries may fall
between other tensors (`save_pretrained` sizes tensors that share a fused tensor's storage by that storage).
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import torch
from torch import nn

from massact.models.checkpoint import SAFETENSORS_DTYPES
from massact.models.offload import BlockOffload, offload_of
from massact.residual.plan import Plan

MAX_SHARD = "50GB"  # save_pretrained's default
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_DTYPES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}  # the names the format gives dtypes


def save(plan: Plan, folder: Path) -> None:
    """Write the rewritten model (weights, config, generation config) into `folder`."""
    if offload_of(plan.model) is None:
        plan.commit()
        plan.model.save_pretrained(folder)
        return
    _save_config(plan, folder)
    write_blockwise(plan, folder)


def _save_config(plan: Plan, folder: Path) -> None:
    """The config `save_pretrained` writes for the committed model: the plan's changes, dtype, architecture."""
    model = plan.model
    config = copy.deepcopy(model.config)
    for edit in plan.config_edits:
        edit(config)
    config.dtype = str(model.dtype).split(".")[1]
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)


def saved_keys(model: nn.Module, untied: str | None) -> list[str]:
    """The state-dict keys `save_pretrained` keeps for the rewritten model (one name per tied tensor)."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = model.state_dict()
    for key in getattr(model, "_keys_to_ignore_on_save", None) or ():
        state.pop(key, None)
    kept = remove_tied_weights_from_state_dict({k: v for k, v in state.items() if k != untied}, model)
    return [k for k in state if k in kept or k == untied]


class _Shard:
    """One safetensors file, laid out from shapes and dtypes first, its tensors written into place one by one."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        self.offsets: dict[str, tuple[int, tuple[int, ...], torch.dtype]] = {}
        start = 0
        for name, tensor in tensors.items():
            if tensor.dtype not in _DTYPES:
                raise TypeError(f"{name}: cannot write a {tensor.dtype} tensor to safetensors here")
            size = tensor.numel() * tensor.element_size()
            header[name] = {
                "dtype": _DTYPES[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": [start, start + size],
            }
            self.offsets[name] = (start, tuple(tensor.shape), tensor.dtype)
            start += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.base = 8 + len(text)
        self.path = path
        self.missing = set(self.offsets)
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(text)) + text)
            handle.truncate(self.base + start)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        start, shape, dtype = self.offsets[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise AssertionError(
                f"{name}: {tuple(tensor.shape)} {tensor.dtype} written where {shape} {dtype} was laid out"
            )
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        with open(self.path, "r+b") as handle:
            handle.seek(self.base + start)
            handle.write(data.tobytes())
        self.missing.discard(name)


def _parts(offload: BlockOffload) -> list[tuple[list[nn.Module], bool]]:
    """(modules, with their children) of each part of the model, read one at a time: trunk, embedding, blocks, head."""
    trunk, embedding, head = offload.parts()
    parts = [(trunk, False)]
    parts += [([embedding], True)] if embedding is not None else []
    parts += [([block], True) for block in offload.structure.blocks]
    parts += [([head], True)] if head is not None else []
    return parts


def _owner(model: nn.Module, key: str) -> nn.Module:
    return model.get_submodule(key.rpartition(".")[0])


def write_blockwise(plan: Plan, folder: Path) -> None:
    """The rewritten model's weights into `folder`, one part of the model in memory at a time."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers.core_model_loading import revert_weight_conversion

    model = plan.model
    offload = offload_of(model)
    keys = saved_keys(model, plan.untied)
    shapes = revert_weight_conversion(model, {k: model.get_parameter_or_buffer(k) for k in keys})
    shapes = {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in shapes.items()}
    split = split_torch_state_dict_into_shards(
        shapes, filename_pattern=WEIGHTS.replace(".safetensors", "{suffix}.safetensors"), max_shard_size=MAX_SHARD
    )
    shards = {
        file: _Shard(Path(folder) / file, {name: shapes[name] for name in names})
        for file, names in split.filename_to_tensors.items()
    }
    parts = _parts(offload)
    where = {}
    for number, (modules, recurse) in enumerate(parts):
        for module in modules:
            for inner in module.modules() if recurse else [module]:
                where.setdefault(id(inner), number)
    by_part: dict[int, list[str]] = {}
    for key in keys:
        by_part.setdefault(where[id(_owner(model, key))], []).append(key)
    for number, (modules, recurse) in enumerate(parts):
        if number not in by_part:
            continue
        resident = offload.load(modules, recurse)
        try:
            with torch.no_grad():
                values = {k: plan.rewritten(k, model.get_parameter_or_buffer(k).detach()) for k in by_part[number]}
            for name, tensor in revert_weight_conversion(model, values).items():
                shards[split.tensor_to_filename[name]].write(name, tensor)
            del values
        finally:
            offload.free(resident)
    missing = sorted(name for shard in shards.values() for name in shard.missing)
    if missing:
        raise AssertionError(f"the rewritten model was written without {missing[0]}")
    if split.is_sharded:
        total = model.num_parameters() + (model.get_parameter(plan.untied).numel() if plan.untied else 0)
        index = {"metadata": {"total_parameters": total, **split.metadata}, "weight_map": split.tensor_to_filename}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        (Path(folder) / INDEX).write_text(text, encoding="utf-8")
