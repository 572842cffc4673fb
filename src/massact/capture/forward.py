"""Forward passes the way every analysis runs them: on the input device, no gradients, explicit mask.

`run_forward` runs one batch; `walk_windows` runs every batch of a set of windows. Both run the model in
memory, or block by block when it was loaded with `offload="blocks"` (`capture.blockwise`): one batch
then reads every block once, and `walk_windows` reads the whole model once for all its batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from massact.models.loaded import running_device
from massact.models.offload import offload_of
from massact.progress import track

Consume = Callable[[int, torch.Tensor, object], None]


def input_device(model: nn.Module) -> torch.device:
    """The device the model's input embeddings live on (the first device under a device map)."""
    offload = offload_of(model)
    if offload is not None:
        return offload.device
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return running_device(model, embeddings.weight.device)
    return running_device(model, next(model.parameters()).device)


def without_logits(model: nn.Module) -> dict:
    """Keyword arguments that make `model` compute logits for the last position only (none if it cannot), for
    passes that read hidden states alone: the head's output is the largest tensor of a long window."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict) -> dict:
    device = input_device(model)
    ids = input_ids.to(device)
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(device)
    batch = {"input_ids": ids, "attention_mask": mask, **kwargs}
    if offload_of(model) is not None and hasattr(getattr(model, "config", None), "use_cache"):
        batch.setdefault("use_cache", False)  # a cache would be filled one block per stage, for nothing
    return batch


def run_forward(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
) -> object:
    """`model(input_ids, attention_mask)` under `torch.no_grad()`; an all-ones mask when none is given.

    The mask is always passed so that hooks reading it (`HookSet`) see which positions are real.
    """
    batch = _inputs(model, input_ids, attention_mask, kwargs)
    offload = offload_of(model)
    if offload is not None:
        from massact.capture.blockwise import run_blockwise

        return run_blockwise(offload, [batch], progress=False)
    with torch.no_grad():
        return model(**batch)


def walk_windows(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    consume: Consume | None = None,
    masks: torch.Tensor | None = None,
    description: str = "forward",
    progress: bool = True,
    **kwargs,
) -> None:
    """Every batch of `windows` [N, L] (with `masks`, else all ones) through the model, in order.

    `consume(start, input_ids, output)` gets each batch's first window index, its ids and the model's output.
    Block by block the model is read once for all batches, and outputs arrive after the last block.
    """
    starts = list(range(0, windows.shape[0], batch_size))

    def batch_at(start: int) -> dict:
        mask = None if masks is None else masks[start : start + batch_size]
        return _inputs(model, windows[start : start + batch_size], mask, kwargs)

    offload = offload_of(model)
    if offload is not None:
        from massact.capture.blockwise import run_blockwise

        batches = [batch_at(start) for start in starts]

        def deliver(number: int, output: object) -> None:
            if consume is not None:
                consume(starts[number], batches[number]["input_ids"], output)

        run_blockwise(offload, batches, deliver, description=description, progress=progress)
        return
    for start in track(starts, description, unit="batch", enabled=progress):
        batch = batch_at(start)
        with torch.no_grad():
            output = model(**batch)
        if consume is not None:
            consume(start, batch["input_ids"], output)
