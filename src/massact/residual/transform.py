"""The three exact rewrites, each written as edits of single tensors into a `Plan` through the model's `Layout`.

Every edit is a function of the tensor it edits (and of numbers fixed when it is planned), so the same plan
rewrites a model in memory and one read block by block from its checkpoint, bit for bit alike. The few
values a rewrite reads from other tensors (norm gains folded into Linears, SmoothQuant's weight maxima) are
read while those tensors are `materialized`.
"""

from __future__ import annotations

import torch

from massact.errors import MassactError
from massact.models.offload import materialized
from massact.residual.layout import Layout, Site, norm_eps
from massact.residual.plan import Edit, Plan
from massact.residual.support import eps_keys, rescale_refusal, rotate_refusal, text_config


def _norm_site(layout: Layout, path: str, name: str = "weight") -> Site | None:
    norm = layout.norms[path]
    return Site(norm, name, 0, f"{path}.{name}") if getattr(norm, name, None) is not None else None


def times(factor: float) -> Edit:
    return lambda tensor: tensor * factor


def _scaled_gain(form: str, factor: torch.Tensor | float) -> Edit:
    """Multiply a norm's output by `factor` through its gain `w` (or `1 + w`, Gemma)."""

    def edit(weight: torch.Tensor) -> torch.Tensor:
        f = factor.to(weight.device) if isinstance(factor, torch.Tensor) else factor
        if form == "1+w":
            return ((1.0 + weight.double()) * f - 1.0).to(weight.dtype)
        return (weight.double() * f).to(weight.dtype)

    return edit


def _scaled_bias(factor: torch.Tensor | float) -> Edit:
    def edit(bias: torch.Tensor) -> torch.Tensor:
        f = factor.to(bias.device) if isinstance(factor, torch.Tensor) else factor
        return (bias.double() * f).to(bias.dtype)

    return edit


def _scale_gain(plan: Plan, layout: Layout, path: str, factor: torch.Tensor | float) -> None:
    """Multiply a norm's output by `factor` (a number or one per channel): through `w`, or `1 + w` for Gemma."""
    plan.edit(_norm_site(layout, path), _scaled_gain(layout.forms[path], factor))
    bias = _norm_site(layout, path, "bias")
    if bias is not None:
        plan.edit(bias, _scaled_bias(factor))


def _unit_gain(plan: Plan, layout: Layout, path: str) -> None:
    """Set a norm's gain to 1 (after it was folded into the Linears that read the norm)."""
    value = 0.0 if layout.forms[path] == "1+w" else 1.0
    plan.edit(_norm_site(layout, path), lambda weight: torch.full_like(weight, value))


def _gain(plan: Plan, layout: Layout, path: str) -> torch.Tensor:
    weight = plan.value(_norm_site(layout, path)).double()
    return 1.0 + weight if layout.forms[path] == "1+w" else weight


def along(axis: int, vector: torch.Tensor) -> Edit:
    """Multiply a tensor along `axis` by `vector`."""

    def edit(tensor: torch.Tensor) -> torch.Tensor:
        shape = [1] * tensor.dim()
        shape[axis] = -1
        return (tensor.double() * vector.to(tensor.device).view(shape)).to(tensor.dtype)

    return edit


def rotated(axis: int, matrix: torch.Tensor) -> Edit:
    """Replace the axis `h` of a tensor by `h @ matrix`."""

    def edit(tensor: torch.Tensor) -> torch.Tensor:
        moved = tensor.double().movedim(axis, -1) @ matrix.to(tensor.device)
        return moved.movedim(-1, axis).to(tensor.dtype)

    return edit


def rescale(plan: Plan, layout: Layout, factor: float) -> list[str]:
    """Multiply the residual stream by `factor`; returns what was changed, in words.

    Embeddings and every write are scaled; every norm's epsilon is scaled by factor^2 and every norm's
    input by `factor` (sandwich norms through their sub-layer, q/k norms through q/k), so each norm's
    output is exactly what it was. A tied LM head keeps its logits through the final norm's gain / factor.
    """
    refusal = rescale_refusal(layout, plan.model.config, factor)
    if refusal is not None:
        raise MassactError(refusal)
    changed = []
    for site in layout.embeddings:
        plan.edit(site, times(factor))
    changed.append(f"embeddings x{factor:g} ({', '.join(s.path for s in layout.embeddings)})")
    for sub in layout.sublayers:
        for site in sub.scaled:
            plan.edit(site, times(factor))
        if sub.post_norm:
            _scale_gain(plan, layout, sub.post_norm, factor)
    changed.append(f"every write into the residual stream x{factor:g} ({len(layout.sublayers)} sub-layers)")
    if any(s.post_norm for s in layout.sublayers):
        changed.append("each sandwich post-norm's gain x" + f"{factor:g}, its input x{factor:g}")
    for site in layout.qk_sources:
        plan.edit(site, times(factor))
    if layout.qk_sources:
        changed.append(f"q/k projections feeding q/k norms x{factor:g}")
    for norm in layout.norms.values():
        name, value = norm_eps(norm)
        plan.attributes.append((norm, name, value * factor * factor))
    config = text_config(plan.model.config)
    keys = eps_keys(config)
    values = {key: getattr(config, key) * factor * factor for key in keys}
    plan.config_edits.append(lambda config: [setattr(text_config(config), k, v) for k, v in values.items()])
    changed.append(f"norm epsilon x{factor * factor:g} ({', '.join(keys)})")
    if layout.tied:
        _scale_gain(plan, layout, layout.final_norm, 1.0 / factor)
        changed.append(f"final norm gain x{1 / factor:g} (the LM head is tied to the embedding)")
    return changed


def rotate(plan: Plan, layout: Layout, matrix: torch.Tensor) -> list[str]:
    """Rotate the residual stream by the orthogonal `matrix` (h -> h Q), norm gains folded first."""
    refusal = rotate_refusal(layout)
    if refusal is not None:
        raise MassactError(refusal)
    changed = []
    if layout.tied:
        plan.untie(layout)
        changed.append("LM head untied from the embedding")
    with materialized(plan.model, layout.norms.values()):  # the gains folded into the readers
        for sub in layout.sublayers:
            gain = _gain(plan, layout, sub.reader)
            for site in sub.readers:
                plan.edit(site, along(site.axis, gain))
            _unit_gain(plan, layout, sub.reader)
        gain = _gain(plan, layout, layout.final_norm)
    plan.edit(layout.head, along(layout.head.axis, gain))
    _unit_gain(plan, layout, layout.final_norm)
    changed.append("every norm's gain folded into the Linears that read it")
    sites = [*layout.embeddings, layout.head]
    for sub in layout.sublayers:
        sites += sub.readers + sub.writers
    for site in sites:
        plan.edit(site, rotated(site.axis, matrix))
    changed.append(f"embedding, {len(sites) - len(layout.embeddings) - 1} readers and writers, LM head rotated")
    return changed


def smooth(plan: Plan, layout: Layout, act_max: dict[str, torch.Tensor], alpha: float) -> list[str]:
    """SmoothQuant: each pre-norm's output divided by s per channel, its readers' columns multiplied by s."""
    done = 0
    for sub in layout.sublayers:
        if sub.reader is None or sub.reader not in act_max or not sub.readers:
            continue
        with materialized(plan.model, {id(s.module): s.module for s in sub.readers}.values()):
            values = [plan.value(s).movedim(s.axis, -1).reshape(-1, layout.hidden).abs() for s in sub.readers]
            scales = smooth_scales(act_max[sub.reader], torch.cat(values), alpha).double().cpu()
        _scale_gain(plan, layout, sub.reader, 1.0 / scales)
        for site in sub.readers:
            plan.edit(site, along(site.axis, scales))
        done += 1
    return [f"SmoothQuant scales (alpha {alpha:g}) folded into {done} pre-norms and the Linears that read them"]


def smooth_scales(act_max: torch.Tensor, weight_rows: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel SmoothQuant scales from activation maxima [in] and the weight [out, in]."""
    w_max = weight_rows.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    a_max = act_max.float().to(w_max.device).clamp(min=1e-5)
    scales = a_max.pow(alpha) / w_max.pow(1 - alpha)
    scales = torch.where(act_max.to(w_max.device) > 0, scales, torch.ones_like(scales))
    return scales.clamp(min=1e-5)
