"""One forward pass the way every analysis runs it: on the input device, no gradients, explicit mask."""

from __future__ import annotations

import torch
from torch import nn


def input_device(model: nn.Module) -> torch.device:
    """The device the model's input embeddings live on (the first device under a device map)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def run_forward(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
) -> object:
    """`model(input_ids, attention_mask)` under `torch.no_grad()`; an all-ones mask when none is given.

    The mask is always passed so that hooks reading it (`HookSet`) see which positions are real.
    """
    device = input_device(model)
    ids = input_ids.to(device)
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(device)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kwargs)
