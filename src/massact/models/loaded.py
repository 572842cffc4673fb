"""`LoadedModel`: a model ready for analysis, with what turns inputs into tensors for it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from massact.models.offload import BlockOffload

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def running_device(model: nn.Module, device: torch.device) -> torch.device:
    """Where a weight of `model` stored on `device` is used: one offloaded to disk by a device map (on the meta
    device until its forward) is used on the map's first device, or the CPU."""
    if device.type != "meta":
        return device
    placed = [d for d in getattr(model, "hf_device_map", {}).values() if d not in ("disk", "meta")]
    return torch.device(placed[0] if placed else "cpu")


@dataclass
class LoadedModel:
    """A model ready for analysis, with whatever turns inputs into tensors for it."""

    model: nn.Module
    tokenizer: object | None = None
    processor: object | None = None
    name: str = "model"
    source: str | None = None  # what was loaded: a file name, a directory or a hub id
    quantization: str | None = None  # e.g. "Q4_1 GGUF, de-quantized to float32"; None for plain weights
    offload: BlockOffload | None = None  # set when the model runs block by block from its checkpoint

    @property
    def description(self) -> str:
        """One line for a report header: the name, the file or hub id it came from, and any quantization."""
        details = [d for d in (self.source if self.source != self.name else None, self.quantization) if d]
        return f"{self.name} ({', '.join(details)})" if details else self.name

    @property
    def config(self):
        return getattr(self.model, "config", None)

    @property
    def device(self) -> torch.device:
        """Where the model runs (block by block: where each block is read to)."""
        if self.offload is not None:
            return self.offload.device
        return running_device(self.model, next(self.model.parameters()).device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of most of the model's floating-point weights."""
        floats = [p.dtype for p in self.model.parameters() if p.is_floating_point()]
        return max(set(floats), key=floats.count) if floats else torch.float32

    def execution(self) -> dict:
        """How the run executed, for the JSON: `offload` ("none" or "blocks"), device, peak resident memory."""
        from massact.models.memory import peak_resident_memory

        info: dict = {"offload": "blocks" if self.offload is not None else "none", "device": str(self.device)}
        if self.device.type == "cuda":
            info["peak_device_memory_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        info["peak_memory_bytes"] = peak_resident_memory()
        return info

    @property
    def context_length(self) -> int | None:
        """Longest input the model takes, from its config (None when it does not say)."""
        config = self.config
        if config is None:
            return None
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in _CONTEXT_KEYS:
            value = getattr(text, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None
