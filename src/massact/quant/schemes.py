"""Quantization schemes (what is quantized, at how many bits) and the fake quantizers that simulate them.

Every quantizer is symmetric round-to-nearest, quantize then dequantize (`q(x) = clamp(round(x / s),
-Q, Q) * s` with `Q = 2^(bits-1) - 1`):

- weights: one scale per output channel (`s = max|W[row]| / Q`), or per group of `group` input channels
  (weight-only schemes of 4 bits or fewer default to groups of 128: `W4` = `W4g128`);
- activations (the input of every Linear except the output head): one scale per tensor, i.e. for the
  whole [batch, tokens, channels] input of one call (all windows of the batch), from the tensor itself
  (`tensor`, dynamic) or fixed from the calibration windows (`static`); or one scale per token (`token`);
- KV cache: the outputs of the key and value projections, one scale per token and head.

Scheme names: `W8`, `W4g128` (weight-only, group 128), `W8A8` (per-tensor dynamic), `W8A8-static`,
`W8A8-token`, `W4A8`, `W4A4`, `KV8`, `KV4`, and combinations such as `W4A8-KV4` or `W8A8-token-KV8`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from massact.errors import MassactError
from massact.fakequant import fake_quantize, qmax
from massact.validate import at_least

GRANULARITIES = ("tensor", "static", "token")
# How each granularity scales activations, in words: every table and suggestion names the scheme this way
SCALE_LABELS = {"tensor": "dynamic per-tensor", "static": "static per-tensor", "token": "dynamic per-token"}
DEFAULT_GROUP = 128  # input channels per weight scale for 4-bit (and lower) weights unless given
_NAME = re.compile(r"^(?:W(\d+)(?:G(\d+))?)?(?:A(\d+)(?:-(TENSOR|STATIC|TOKEN))?)?(?:-?KV(\d+))?$")
EXAMPLES = "W8, W4g128, W8A8, W8A8-static, W8A8-token, W4A8, W4A4, KV8, KV4, W4A8-KV4"


def _check_bits(bits: int | None, what: str) -> None:
    if bits is not None and not 2 <= bits <= 32:
        raise MassactError(f"{what} bits {bits}: must be between 2 and 32")


@dataclass(frozen=True)
class Scheme:
    """What is fake-quantized: weights, Linear inputs and/or the KV cache, and how."""

    weight_bits: int | None = None
    group: int | None = None  # input channels per weight scale; None = one scale per output channel
    act_bits: int | None = None
    granularity: str = "tensor"  # activations: tensor (dynamic), static (calibrated) or token
    kv_bits: int | None = None

    def __post_init__(self) -> None:
        _check_bits(self.weight_bits, "weight")
        _check_bits(self.act_bits, "activation")
        _check_bits(self.kv_bits, "KV-cache")
        if self.granularity not in GRANULARITIES:
            raise MassactError(f"activation scales {self.granularity!r}: use one of {', '.join(GRANULARITIES)}")
        if self.group is not None:
            at_least("weight group", self.group)
            if self.weight_bits is None:
                raise MassactError(f"weight group {self.group}: needs weight bits")
        if self.weight_bits is None and self.act_bits is None and self.kv_bits is None:
            raise MassactError(f"a scheme quantizes something; give one like {EXAMPLES}")

    @property
    def name(self) -> str:
        """The canonical name (parses back to the same scheme)."""
        parts = ""
        if self.weight_bits is not None:
            parts = f"W{self.weight_bits}" + (f"g{self.group}" if self.group is not None else "")
        if self.act_bits is not None:
            parts += f"A{self.act_bits}" + ("" if self.granularity == "tensor" else f"-{self.granularity}")
        if self.kv_bits is not None:
            parts += ("-" if parts else "") + f"KV{self.kv_bits}"
        return parts

    @property
    def act_label(self) -> str:
        """How activations are scaled, in words ("dynamic per-tensor"); "" when they are not quantized."""
        return SCALE_LABELS[self.granularity] if self.act_bits is not None else ""

    @property
    def described(self) -> str:
        """The name with its activation scales in words: `W8A8 (dynamic per-tensor)`; weight/KV-only: the name."""
        return f"{self.name} ({self.act_label})" if self.act_label else self.name

    @property
    def quantizes_linears(self) -> bool:
        return self.weight_bits is not None or self.act_bits is not None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "weight_bits": self.weight_bits,
            "weight_group": self.group,
            "act_bits": self.act_bits,
            "act_scales": self.granularity if self.act_bits is not None else None,
            "act_scales_label": self.act_label or None,
            "kv_bits": self.kv_bits,
        }


def parse_scheme(text: str) -> Scheme:
    """`W8A8-token` -> Scheme; weight-only 4-bit (and lower) weights get groups of 128 unless a group is given."""
    match = _NAME.match(text.strip().upper())
    if not text.strip() or match is None:
        raise MassactError(f"scheme {text!r} is not known; use names like {EXAMPLES}")
    w, g, a, gran, kv = match.groups()
    weight_bits = int(w) if w else None
    weight_only = a is None and kv is None
    group = int(g) if g else (DEFAULT_GROUP if weight_only and weight_bits is not None and weight_bits <= 4 else None)
    return Scheme(
        weight_bits=weight_bits,
        group=group,
        act_bits=int(a) if a else None,
        granularity=(gran or "tensor").lower(),
        kv_bits=int(kv) if kv else None,
    )


def quantize_weight(weight: torch.Tensor, bits: int, group: int | None = None) -> torch.Tensor:
    """Weight [out, in] quantized per output channel, or per `group` input channels within each row."""
    out_features, in_features = weight.shape
    if group is None or group >= in_features:
        low, high = torch.aminmax(weight, dim=1, keepdim=True)
        return fake_quantize(weight, torch.maximum(high, low.neg_()) / qmax(bits), bits)
    pad = (-in_features) % group
    padded = torch.nn.functional.pad(weight, (0, pad)).view(out_features, -1, group)
    scale = padded.abs().amax(dim=2, keepdim=True) / qmax(bits)
    return fake_quantize(padded, scale, bits).view(out_features, -1)[:, :in_features]


def activation_scale(x: torch.Tensor, bits: int, granularity: str, keep: torch.Tensor | None) -> torch.Tensor:
    """Dynamic scales for x [..., tokens, channels]: one for the whole tensor (every sequence of the batch,
    as a serving kernel sees it) or one per token.

    Tokens where `keep` [..., tokens] is true stay out of the scale (they are not quantized).
    """
    if keep is not None:
        peak = x.abs().masked_fill_(keep.unsqueeze(-1), 0.0).amax(dim=-1, keepdim=True)
        if granularity != "token":
            peak = peak.amax(dim=tuple(range(peak.dim() - 1)), keepdim=True)
        return peak / qmax(bits)
    if granularity == "token":
        low, high = torch.aminmax(x, dim=-1, keepdim=True)  # no full-size |x| to allocate
    else:
        low, high = torch.aminmax(x)
    return torch.maximum(high, low.neg_()) / qmax(bits)


def quantize_activation(
    x: torch.Tensor,
    bits: int,
    granularity: str = "tensor",
    keep: torch.Tensor | None = None,
    static_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fake-quantized x [..., tokens, channels]; tokens where `keep` is true pass through unchanged."""
    dynamic = static_scale is None
    scale = activation_scale(x, bits, granularity, keep) if dynamic else static_scale
    quantized = fake_quantize(x, scale, bits, clamp=not dynamic or keep is not None)
    if keep is None:
        return quantized
    return torch.where(keep.unsqueeze(-1), x, quantized)


def quantize_heads(x: torch.Tensor, bits: int, head_dim: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantized key or value projection output [..., tokens, heads * head_dim], per token and head."""
    shape = x.shape
    heads = x.reshape(*shape[:-1], shape[-1] // head_dim, head_dim)
    scale = heads.abs().amax(dim=-1, keepdim=True) / qmax(bits)
    quantized = fake_quantize(heads, scale, bits).reshape(shape)
    if keep is None:
        return quantized
    return torch.where(keep.unsqueeze(-1), x, quantized)
