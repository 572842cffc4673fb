"""A model with no weights in memory, and where each of its tensors lives on disk: `open_checkpoint`.

transformers builds the model on the meta device and maps every parameter to its tensor in the checkpoint
(its key conversions included, e.g. Mixtral's per-expert weights fused into 3-D tensors, which it writes
once to the offload folder); `Checkpoint.read` then loads any set of tensors, each read whole into memory.
The offload folder is a temporary folder, removed when the checkpoint is closed or the process exits.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from massact.errors import MassactError

TEMP_PREFIX = "massact-offload-"


class Checkpoint:
    """Where each tensor of a meta-device model is stored: a safetensors file and key, or the offload folder."""

    def __init__(self, index: dict[str, dict], folder: Path) -> None:
        self.index = index
        self.folder = folder
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(folder), True)

    def close(self) -> None:
        """Remove the temporary offload folder (also done at exit)."""
        self._cleanup()

    def read(self, names: Iterable[str], dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
        """The tensors `names` on the CPU, each in `dtypes[name]`; a damaged file stops with one line."""
        by_file: dict[str | None, list[str]] = defaultdict(list)
        for name in names:
            if name not in self.index:
                raise MassactError(
                    f"the checkpoint has no tensor for {name}; it is incomplete or made for another model"
                )
            by_file[self.index[name].get("safetensors_file")].append(name)
        tensors: dict[str, torch.Tensor] = {}
        for file, members in by_file.items():
            if file is None:
                for name in members:
                    tensors[name] = self._read_offloaded(name).to(dtypes[name])
            else:
                tensors.update(self._read_safetensors(file, members, dtypes))
        return tensors

    def _read_safetensors(self, file: str, names: list[str], dtypes: dict[str, torch.dtype]) -> dict:
        name = names[0]
        try:
            out = {}
            with open(file, "rb", buffering=0) as handle:
                header, start = _safetensors_header(handle)
                for name in names:
                    out[name] = _read_tensor(handle, start, header[self.index[name]["weight_name"]], dtypes[name])
            return out
        except MassactError:
            raise
        except Exception as exc:
            raise _damaged(file, self.index[name].get("weight_name", name), exc) from None

    def _read_offloaded(self, name: str) -> torch.Tensor:
        from accelerate.utils.offload import load_offloaded_weight

        path = self.folder / f"{name}.dat"
        try:
            return load_offloaded_weight(str(path), self.index[name])
        except Exception as exc:
            raise _damaged(str(path), name, exc) from None


# safetensors' dtype names (https://github.com/huggingface/safetensors, the format's README)
SAFETENSORS_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _safetensors_header(handle) -> tuple[dict, int]:
    """A safetensors file's header (tensor key -> dtype, shape, byte range) and where its data starts."""
    length = int.from_bytes(handle.read(8), "little")
    header = json.loads(handle.read(length))
    size = (
        8
        + length
        + max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    )
    short = size - os.fstat(handle.fileno()).st_size
    if short > 0:  # cut short (a partial download, a full disk): refuse the file, as safetensors does
        raise EOFError(f"the file is {short} bytes shorter than its header says")
    return header, 8 + length


READ_CHUNK = 64 * 2**20  # bytes read at a time when a tensor changes dtype on the way in


def _read_tensor(handle, start: int, entry: dict, dtype: torch.dtype) -> torch.Tensor:
    """One tensor of an open safetensors file, read into fresh memory as `dtype`.

    Plain reads, not a memory map: the pages of a mapped file count in the process's resident memory until
    the file is closed, which for a block of a 13B model is most of a gigabyte more at the peak. A tensor that
    changes dtype is converted chunk by chunk, so it is never held twice (a 13B model's embedding: 0.5 GB).
    """
    stored = SAFETENSORS_DTYPES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    handle.seek(start + begin)
    if stored == dtype:
        raw = torch.empty(end - begin, dtype=torch.uint8)
        _read_into(handle, raw)
        return raw.view(stored).reshape(entry["shape"])
    out = torch.empty(entry["shape"], dtype=dtype)
    flat = out.view(-1)
    size = torch.empty((), dtype=stored).element_size()
    step = max(1, READ_CHUNK // size)
    raw = torch.empty(min(step, flat.numel()) * size, dtype=torch.uint8)
    for first in range(0, flat.numel(), step):
        count = min(step, flat.numel() - first)
        chunk = raw[: count * size]
        _read_into(handle, chunk)
        flat[first : first + count].copy_(chunk.view(stored))
    return out


def _read_into(handle, buffer: torch.Tensor) -> None:
    """Fill a uint8 tensor from the file's current position; one read returns at most about 2 GB."""
    view = memoryview(buffer.numpy())
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])
        if not got:
            raise EOFError(f"the file ends {len(view) - done} bytes before this tensor does")  # cut while read
        done += got


def _damaged(file: str, key: str, exc: Exception) -> MassactError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return MassactError(
        f"{file}: cannot read tensor {key} ({detail}); the checkpoint is damaged: download or convert it again"
    )


def open_checkpoint(cls: type, source: str, config: object, **kwargs) -> tuple[nn.Module, Checkpoint]:
    """`cls.from_pretrained(source)` built on the meta device, and the `Checkpoint` of its tensors.

    When `source` is a folder whose safetensors files hold every tensor under the model's own names, only the
    files' headers are read; otherwise transformers maps (and where needed converts) the tensors.
    """
    direct = _open_by_names(cls, Path(source), config, kwargs.get("dtype"))
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    if direct is not None:
        model, index = direct
        return model, Checkpoint(index, folder)
    return _open_through_transformers(cls, source, config, folder, **kwargs)


def empty_model(cls: type, config: object, dtype: torch.dtype | None = None) -> nn.Module:
    """`cls` built from `config` with its parameters on the meta device (buffers computed at build time are real),
    tied weights tied."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        build = getattr(cls, "from_config", None) or cls._from_config  # an Auto class, or the model's own
        model = build(config, dtype=dtype) if dtype is not None else build(config)
    model.tie_weights()  # a tied head is not a second copy of the embedding
    return model


def _open_by_names(cls: type, folder: Path, config: object, dtype: torch.dtype | None):
    """(meta model, index) from the safetensors headers alone, or None when a tensor's key is not its name."""
    if not folder.is_dir() or getattr(config, "quantization_config", None) is not None:
        return None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    keys: dict[str, str] = {}
    for file in files:
        try:
            with open(file, "rb") as handle:
                header, _ = _safetensors_header(handle)
        except Exception as exc:
            raise _damaged(str(file), "(header)", exc) from None
        keys.update({key: str(file) for key in header if key != "__metadata__"})
    model = empty_model(cls, config, dtype)
    meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if not meta or any(name not in keys for name in meta):
        return None
    return model.eval(), {name: {"safetensors_file": keys[name], "weight_name": name} for name in meta}


def _open_through_transformers(
    cls: type, source: str, config: object, folder: Path, **kwargs
) -> tuple[nn.Module, Checkpoint]:
    from accelerate.hooks import remove_hook_from_module

    note = logging.getLogger("accelerate.big_modeling")  # "some parameters are on the meta device": the point
    level = note.level
    note.setLevel(logging.ERROR)
    try:
        model = cls.from_pretrained(
            source, config=config, device_map={"": "disk"}, offload_folder=str(folder), **kwargs
        )
        index = _weights_index(model)
        remove_hook_from_module(model, recurse=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        note.setLevel(level)
    checkpoint = Checkpoint(index, folder)
    missing = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_meta and name not in index
    ]
    if missing:
        checkpoint.close()
        raise MassactError(
            f"{source}: the checkpoint has no tensor for {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; it is incomplete or made for another model"
        )
    return model, checkpoint


def _weights_index(model: nn.Module) -> dict[str, dict]:
    """Parameter name -> its entry (file and key, or offload file), from the offload hooks accelerate put on it."""
    for module in model.modules():
        weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        index = getattr(getattr(weights, "dataset", None), "index", None)
        if index is not None:
            return {key: dict(entry) for key, entry in index.items()}
    return {}
