"""`LoadedModel`: a model ready for analysis, with what turns inputs into tensors for it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass
class LoadedModel:
    """A model ready for analysis, with whatever turns inputs into tensors for it."""

    model: nn.Module
    tokenizer: object | None = None
    processor: object | None = None
    name: str = "model"
    source: str | None = None  # what was loaded: a file name, a directory or a hub id
    quantization: str | None = None  # e.g. "Q4_1 GGUF, de-quantized to float32"; None for plain weights

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
        return next(self.model.parameters()).device

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
