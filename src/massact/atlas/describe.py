"""The part of each row no step fills: what the model is, and the rewrites it accepts."""

from __future__ import annotations

from massact.atlas.context import Context
from massact.models.dims import model_dims
from massact.models.structure import find_structure


def describe(ctx: Context) -> dict:
    """Architecture, blocks, hidden size, parameter count and the rewrites the model accepts."""
    model = ctx.loaded.model
    dims = model_dims(model)
    config = getattr(model, "config", None)
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "num_blocks": len(find_structure(model)),
        "hidden_size": dims.hidden_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rewrites": rewrites(ctx),
    }


def rewrites(ctx: Context) -> dict:
    """Per rewrite (rescale, smooth, rotate, check_quant): None when `massact rewrite` accepts it for this
    model, else the line it refuses it with; the atlas suggests only accepted rewrites."""
    from massact.residual.support import REWRITES, refusals

    ids = ctx.loaded.tokenizer(ctx.config.prompt, return_tensors="pt")["input_ids"]
    try:
        return refusals(ctx.loaded, ids)
    except Exception as exc:  # a model the rewrite cannot map: no rewrite is suggested for it, with the reason
        text = str(exc).strip().splitlines()
        why = f"the rewrite cannot map this model ({text[0] if text else type(exc).__name__})"
        return dict.fromkeys((*REWRITES, "check_quant"), why)
