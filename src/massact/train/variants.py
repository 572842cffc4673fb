"""The model designs the lab trains, one registry entry each: how attention weighs its keys, what it adds.

An entry says, for either architecture (`gpt2.py`, `llama.py`):
- `weights`: attention weights from scaled scores [B, H, T, S] and the bool mask of visible keys, or None for
  plain softmax (then PyTorch's fused SDPA runs it);
- `extra_key`: every head attends over one more learnable key k' and value v' (`k_bias`, `v_bias`);
- `sink_logit`: one learnable value-less logit per head (`sink_logit`), passed to `weights`;
- `gate`: the attention output times sigmoid(x W_g + b_g) of the block's normed input (`c_gate`), one gate
  per element ("element") or per head ("head");
- `prefix_token`: one learnable token in front of every sequence (`sink_token`), dropped before the logits;
- `single_scale_norm`: every norm has one scalar gain instead of one per channel (OSP, arXiv 2506.19697).

Adding a design is one `register(Variant(...))`; `defaults.ATTENTION_VARIANTS` lists the names for the CLI's
help (a test checks both agree). `sink` and `bias` are accepted as the earlier names of `sink-token` and
`attn-bias`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from massact.errors import MassactError

SOFTPICK_EPS = 1e-6
OLD_NAMES = {"sink": "sink-token", "bias": "attn-bias"}

Weights = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Variant:
    """One design: its attention weights and the parameters it adds (see the module docstring)."""

    name: str
    summary: str  # one line: what it is and where it comes from
    weights: Weights | None = None  # None: softmax
    extra_key: bool = False
    sink_logit: bool = False
    gate: str | None = None  # "element" or "head"
    prefix_token: bool = False
    single_scale_norm: bool = False

    @property
    def softmax(self) -> bool:
        """Whether the weights are a softmax over the keys (what SDPA computes)."""
        return self.weights is None


VARIANTS: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Add a design to the registry (its name must be new)."""
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name!r} is registered twice")
    VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The registered design called `name` (earlier names mapped); an unknown name is refused."""
    name = OLD_NAMES.get(name, name)
    if name not in VARIANTS:
        raise MassactError(f"unknown attention variant {name!r}; use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def check_variant(name: str) -> str:
    """The variant's current name; an unknown name is refused."""
    return get_variant(name).name


def with_extra_logit(scores: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys plus one value-less logit per head ([H]); the extra column is dropped."""
    extra = logit.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return F.softmax(torch.cat([scores, extra], dim=-1), dim=-1)[..., :-1]


def _sink_logit(scores: torch.Tensor, visible: torch.Tensor, logit: torch.Tensor | None) -> torch.Tensor:
    return with_extra_logit(scores, logit)


def _softmax1(scores: torch.Tensor, visible: torch.Tensor, logit: torch.Tensor | None) -> torch.Tensor:
    return with_extra_logit(scores, scores.new_zeros(scores.shape[1]))


def _softpick(scores: torch.Tensor, visible: torch.Tensor, logit: torch.Tensor | None) -> torch.Tensor:
    """relu(e^x - 1) / sum|e^x - 1|, both sides times e^-m, m = max(0, largest score), so nothing overflows: with
    m the largest score alone, a row whose scores all lie under -88 (float32) gave e^-m = inf and NaN weights."""
    top = scores.amax(dim=-1, keepdim=True).detach().clamp_min(0.0)
    shifted = torch.where(visible, torch.exp(scores - top) - torch.exp(-top), 0.0)
    denominator = shifted.abs().sum(dim=-1, keepdim=True) + SOFTPICK_EPS * torch.exp(-top)
    return F.relu(shifted) / denominator


def _sigmoid(scores: torch.Tensor, visible: torch.Tensor, logit: torch.Tensor | None) -> torch.Tensor:
    return torch.sigmoid(scores - math.log(scores.shape[-1])) * visible


register(Variant("default", "plain causal softmax attention"))
register(Variant("sink-token", "a learnable token prepended to every sequence", prefix_token=True))
register(Variant("attn-bias", "softmax(Q [K; k']^T / sqrt(d)) [V; v'] (Sun et al. 2024)", extra_key=True))
register(Variant("sink-logit", "a value-less learnable logit per head (GPT-OSS)", _sink_logit, sink_logit=True))
register(Variant("gated", "output times sigmoid(x W_g), per element (Qiu et al. 2025)", gate="element"))
register(Variant("gated-head", "output times sigmoid(x W_g), per head (Qwen3-Next)", gate="head"))
register(Variant("softmax1", "softmax with 1 added to its denominator", _softmax1))
register(Variant("softpick", "relu(e^x - 1) / sum |e^x - 1| (Zuhri et al. 2025)", _softpick))
register(Variant("sigmoid", "sigmoid(x - log n), not normalised (Ramapuram et al. 2024)", _sigmoid))
register(Variant("single-scale-norm", "softmax; every norm has one scalar gain (OSP)", single_scale_norm=True))


def attention_weights(
    variant: str | Variant, scores: torch.Tensor, visible: torch.Tensor, sink_logit: torch.Tensor | None = None
) -> torch.Tensor:
    """Weights of `variant` from scaled scores [B, H, T, S] and the bool mask of visible keys (broadcastable).

    Masked keys get weight 0. Softmax variants sum to 1 over the keys; `sink-logit` and `softmax1`
    leave the sink's share out; `softpick` and `sigmoid` are not normalised.
    """
    design = variant if isinstance(variant, Variant) else get_variant(variant)
    scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    if design.softmax:
        return F.softmax(scores, dim=-1)
    return design.weights(scores, visible, sink_logit)
