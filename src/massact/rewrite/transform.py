"""The three exact rewrites, each applied in place to a copy of the model through its `Layout`."""

from __future__ import annotations

import torch
from torch import nn

from massact.errors import MassactError
from massact.rewrite.layout import Layout, Site, norm_eps

_EPS_KEYS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps", "layernorm_epsilon")


def _scale_gain(layout: Layout, path: str, factor: torch.Tensor | float) -> None:
    """Multiply a norm's output by `factor` (a number or one per channel): through `w`, or `1 + w` for Gemma."""
    norm = layout.norms[path]
    weight = norm.weight
    if layout.forms[path] == "1+w":
        weight.copy_(((1.0 + weight.double()) * factor - 1.0).to(weight.dtype))
    else:
        weight.copy_((weight.double() * factor).to(weight.dtype))
    bias = getattr(norm, "bias", None)
    if bias is not None:
        bias.copy_((bias.double() * factor).to(bias.dtype))


def _unit_gain(layout: Layout, path: str) -> None:
    """Set a norm's gain to 1 (after it was folded into the Linears that read the norm)."""
    weight = layout.norms[path].weight
    weight.fill_(0.0 if layout.forms[path] == "1+w" else 1.0)


def _gain(layout: Layout, path: str) -> torch.Tensor:
    weight = layout.norms[path].weight.detach().double()
    return 1.0 + weight if layout.forms[path] == "1+w" else weight


def _along(site: Site, vector: torch.Tensor) -> None:
    """Multiply a parameter along its hidden axis by `vector`."""
    tensor = site.tensor
    shape = [1] * tensor.dim()
    shape[site.axis] = -1
    tensor.copy_((tensor.double() * vector.to(tensor.device).view(shape)).to(tensor.dtype))


def _rotate(site: Site, matrix: torch.Tensor) -> None:
    """Replace the hidden axis `h` of a parameter by `h @ matrix`."""
    tensor = site.tensor
    moved = tensor.double().movedim(site.axis, -1) @ matrix.to(tensor.device)
    tensor.copy_(moved.movedim(-1, site.axis).to(tensor.dtype))


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def untie(model: nn.Module, layout: Layout) -> None:
    """Give the LM head its own copy of the tied embedding, and say so in the config."""
    head = layout.head.module
    head.weight = nn.Parameter(head.weight.detach().clone())
    for config in {id(c): c for c in (model.config, _text_config(model))}.values():
        config.tie_word_embeddings = False
    layout.head = Site(head, "weight", 1, layout.head.path)
    layout.tied = False


@torch.no_grad()
def rescale(model: nn.Module, layout: Layout, factor: float) -> list[str]:
    """Multiply the residual stream by `factor`; returns what was changed, in words.

    Embeddings and every write are scaled; every norm's epsilon is scaled by factor^2 and every norm's
    input by `factor` (sandwich norms through their sub-layer, q/k norms through q/k), so each norm's
    output is exactly what it was. A tied LM head keeps its logits through the final norm's gain / factor.
    """
    if layout.final_norm is None:
        raise MassactError("--rescale: no final norm before the LM head was found, so the logits would be rescaled too")
    changed = []
    for site in layout.embeddings:
        site.tensor.mul_(factor)
    changed.append(f"embeddings x{factor:g} ({', '.join(s.path for s in layout.embeddings)})")
    for sub in layout.sublayers:
        for site in sub.scaled:
            site.part().mul_(factor)
        if sub.post_norm:
            _scale_gain(layout, sub.post_norm, factor)
    changed.append(f"every write into the residual stream x{factor:g} ({len(layout.sublayers)} sub-layers)")
    if any(s.post_norm for s in layout.sublayers):
        changed.append("each sandwich post-norm's gain x" + f"{factor:g}, its input x{factor:g}")
    for site in layout.qk_sources:
        site.tensor.mul_(factor)
    if layout.qk_sources:
        changed.append(f"q/k projections feeding q/k norms x{factor:g}")
    for norm in layout.norms.values():
        name, value = norm_eps(norm)
        setattr(norm, name, value * factor * factor)
    config = _text_config(model)
    keys = [k for k in _EPS_KEYS if isinstance(getattr(config, k, None), float)]
    if not keys and factor != 1.0:
        raise MassactError(
            "the model's config names no norm epsilon (rms_norm_eps, layer_norm_eps...), so it cannot be rescaled"
        )
    for key in keys:
        setattr(config, key, getattr(config, key) * factor * factor)
    changed.append(f"norm epsilon x{factor * factor:g} ({', '.join(keys)})")
    if layout.tied:
        _scale_gain(layout, layout.final_norm, 1.0 / factor)
        changed.append(f"final norm gain x{1 / factor:g} (the LM head is tied to the embedding)")
    return changed


@torch.no_grad()
def rotate(model: nn.Module, layout: Layout, matrix: torch.Tensor) -> list[str]:
    """Rotate the residual stream by the orthogonal `matrix` (h -> h Q), norm gains folded first."""
    if layout.sandwich:
        raise MassactError(
            "--rotate: the model has sandwich post-norms (Gemma 2/3); their gains do not commute with a rotation"
        )
    centred = [n for n in layout.norms if layout.centred[n]]
    if centred:
        raise MassactError(f"--rotate: {centred[0]} subtracts the mean (LayerNorm); only RMSNorm models rotate exactly")
    if layout.final_norm is None or layout.head is None:
        raise MassactError("--rotate: no final norm before the LM head was found; the rotation would not be exact")
    changed = []
    if layout.tied:
        untie(model, layout)
        changed.append("LM head untied from the embedding")
    for sub in layout.sublayers:
        if sub.reader is None:
            raise MassactError(f"--rotate: {sub.path} reads the residual stream through no norm")
        gain = _gain(layout, sub.reader)
        for site in sub.readers:
            _along(site, gain)
        _unit_gain(layout, sub.reader)
    gain = _gain(layout, layout.final_norm)
    _along(layout.head, gain)
    _unit_gain(layout, layout.final_norm)
    changed.append("every norm's gain folded into the Linears that read it")
    sites = [*layout.embeddings, layout.head]
    for sub in layout.sublayers:
        sites += sub.readers + sub.writers
    for site in sites:
        _rotate(site, matrix)
    changed.append(f"embedding, {len(sites) - len(layout.embeddings) - 1} readers and writers, LM head rotated")
    return changed


@torch.no_grad()
def smooth(layout: Layout, act_max: dict[str, torch.Tensor], alpha: float) -> list[str]:
    """SmoothQuant: each pre-norm's output divided by s per channel, its readers' columns multiplied by s."""
    from massact.quant.strategies import smooth_scales

    done = 0
    for sub in layout.sublayers:
        if sub.reader is None or sub.reader not in act_max or not sub.readers:
            continue
        rows = torch.cat([s.tensor.detach().movedim(s.axis, -1).reshape(-1, layout.hidden).abs() for s in sub.readers])
        scales = smooth_scales(act_max[sub.reader], rows, alpha).double().cpu()
        _scale_gain(layout, sub.reader, 1.0 / scales)
        for site in sub.readers:
            _along(site, scales)
        done += 1
    return [f"SmoothQuant scales (alpha {alpha:g}) folded into {done} pre-norms and the Linears that read them"]
