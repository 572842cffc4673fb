"""Which rewrites `massact rewrite` accepts for a model, found the way the rewrite finds them, nothing rewritten.

The rewrite itself (`massact.residual.transform`) refuses with the same `*_refusal` lines.

`refusals(loaded, ids)` maps the model's residual stream (`find_layout`, one forward on `ids`) and answers,
for each of `rescale`, `smooth`, `rotate` and `check_quant`, None when the rewrite accepts it, or the one
line the rewrite would refuse it with. Analyses that suggest a rewrite (atlas) suggest only accepted ones.
"""

from __future__ import annotations

import torch

from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.residual import CHECK_QUANT_BLOCKS
from massact.residual.layout import Layout, check_known, find_layout

REWRITES = ("rescale", "smooth", "rotate")
PROBE_TOKENS = 32  # the rewrite maps the layout on as many tokens of its first calibration window
EPS_KEYS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps", "layernorm_epsilon")


def text_config(config: object) -> object:
    """The text part of a config (the config itself for a text-only model)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def eps_keys(config: object) -> list[str]:
    """The norm epsilons the model's (text) config names, which a rescale multiplies too."""
    return [k for k in EPS_KEYS if isinstance(getattr(config, k, None), float)]


def rescale_refusal(layout: Layout, config: object, factor: float | None = None) -> str | None:
    """Why `--rescale` cannot rewrite this model exactly, in one line; None when it can (`factor` None: any)."""
    if layout.final_norm is None:
        return "--rescale: no final norm before the LM head was found, so the logits would be rescaled too"
    if not eps_keys(text_config(config)) and factor != 1.0:
        return "the model's config names no norm epsilon (rms_norm_eps, layer_norm_eps...), so it cannot be rescaled"
    return None


def rotate_refusal(layout: Layout) -> str | None:
    """Why `--rotate` cannot rewrite this model exactly, in one line; None when it can."""
    if layout.sandwich:
        return "--rotate: the model has sandwich post-norms (Gemma 2/3); their gains do not commute with a rotation"
    centred = [n for n in layout.norms if layout.centred[n]]
    if centred:
        return f"--rotate: {centred[0]} subtracts the mean (LayerNorm); only RMSNorm models rotate exactly"
    if layout.final_norm is None or layout.head is None:
        return "--rotate: no final norm before the LM head was found; the rotation would not be exact"
    missing = next((sub.path for sub in layout.sublayers if sub.reader is None), None)
    if missing is not None:
        return f"--rotate: {missing} reads the residual stream through no norm"
    return None


def smooth_refusal(layout: Layout) -> str | None:
    """Why `--smooth` would change nothing (no sub-layer reads the stream through a pre-norm); None when it can."""
    if not any(sub.reader is not None and sub.readers for sub in layout.sublayers):
        return "--smooth: no sub-layer reads the residual stream through a norm whose gain could take the scales"
    return None


def refusals(loaded: LoadedModel, ids: torch.Tensor, blocks_path: str | None = None) -> dict[str, str | None]:
    """Per rewrite (and `check_quant`), None when `massact rewrite` accepts it for `loaded`, else why not."""
    check = CHECK_QUANT_BLOCKS if loaded.offload is not None else None
    layout = find_layout(loaded.model, ids[:1, :PROBE_TOKENS], blocks_path)
    try:
        check_known(layout, "rewrite")
    except MassactError as err:
        return dict.fromkeys(REWRITES, str(err)) | {"check_quant": check}
    return {
        "rescale": rescale_refusal(layout, loaded.model.config),
        "smooth": smooth_refusal(layout),
        "rotate": rotate_refusal(layout),
        "check_quant": check,
    }
