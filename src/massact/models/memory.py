"""Memory: what a device has free, what a model and a run need, and whether the model fits (`--offload auto`).

The budget of a run is `--max-memory`, or the memory available on its device less a margin: 10% of what is
available, at least 1 GiB (other processes, the allocator's slack, the tokenizer, Python itself).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from massact.errors import MassactError
from massact.models.dims import model_dims
from massact.validate import given

GIB = 2**30
MIN_MARGIN = GIB
MARGIN_SHARE = 0.10
_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int, what: str = "max_memory") -> int:
    """Bytes in `text`: a number of bytes, or with a unit: "24GB", "24G", "1.5GiB", "500MB", "800MiB"."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise MassactError(f"{given(what, text)}: not a size; give bytes or a size such as 20GB, 1.5GiB or 800MB")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value <= 0:
        raise MassactError(f"{given(what, text)}: must be more than 0 bytes")
    return value


def gib(size: float) -> str:
    """Bytes as GB (2^30), for messages: 1.23 GB."""
    return f"{size / GIB:.2f} GB"


def available_memory(device: torch.device | str) -> int:
    """Bytes free for new tensors on `device` (MemAvailable on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget(device: torch.device | str) -> int:
    """What a run may use on `device`: what is available less the margin (10%, at least 1 GiB)."""
    free = available_memory(device)
    return max(0, free - max(MIN_MARGIN, int(MARGIN_SHARE * free)))


def peak_resident_memory() -> int:
    """The process's largest resident set so far, in bytes (Linux and macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@functools.cache
def _libc_trim():
    """glibc's `malloc_trim`, or None (another C library, another system)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc).

    Freed tensors smaller than glibc's mmap threshold stay in the allocator's heaps, spread between live
    ones; over the blocks of a model read one at a time that grows the resident memory by tens of MB per block.
    """
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def tensor_bytes(tensors: object) -> int:
    """Bytes of the distinct tensors among `tensors` (a module's parameters and buffers, say)."""
    seen: dict[int, int] = {}
    for tensor in tensors:  # type: ignore[attr-defined]
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared ones once), meta tensors included."""
    return tensor_bytes([*module.parameters(), *module.buffers()])


@dataclass(frozen=True)
class Workload:
    """How much one forward pass holds at once: `batch` windows of `tokens` tokens."""

    batch: int = 8
    tokens: int = 512

    def working_bytes(self, model: nn.Module, dtype: torch.dtype) -> int:
        """About what one batch's forward pass holds beside the weights: a few hidden-state copies, the MLP's
        inner activations, one attention map and the float32 logits (with their log-softmax)."""
        dims = model_dims(model)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        hidden = dims.hidden_size or 0
        inner = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
        size = torch.finfo(dtype).bits // 8
        tokens = self.batch * self.tokens
        states = tokens * (8 * hidden + 3 * inner) * size
        attention = self.batch * (dims.num_heads or 1) * self.tokens**2 * 4 * 2
        logits = tokens * (dims.vocab_size or 0) * 4 * 2
        return states + attention + logits
