"""The one quantize-dequantize round trip: symmetric round-to-nearest, `q(x) = clamp(round(x / s), -Q, Q) * s`
with `Q = 2^(bits-1) - 1`. Quant's simulated schemes (`massact.quant.schemes`: per channel, group, tensor,
token, head) and the int8 risk of the block outputs (`massact.capture.risk`: per tensor) both round through
`fake_quantize`.
"""

from __future__ import annotations

import math

import torch


def qmax(bits: int) -> int:
    """Largest code of a symmetric signed `bits`-bit integer."""
    return 2 ** (bits - 1) - 1


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, bits: int, clamp: bool = True) -> torch.Tensor:
    """clamp(round(x / scale), -Q, Q) * scale, computed in x's dtype; a zero scale leaves zeros at zero.

    `clamp=False` skips the clamp where the scale comes from x's own maximum (nothing can exceed Q).
    """
    limit = qmax(bits)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # as small as the scale: cheap
    quantized = (x / safe).round_()
    if clamp:
        quantized.clamp_(-limit, limit)
    return quantized.mul_(safe)


def round_trip(x: torch.Tensor, bits: int, scale_from: torch.Tensor | None = None) -> torch.Tensor:
    """`x` quantized and dequantized with one scale for the whole tensor, `max|scale_from| / Q` (`scale_from`
    defaults to `x`); a copy of `x` when that maximum is 0 or not finite."""
    reference = x if scale_from is None else scale_from
    peak = float(reference.abs().max()) if reference.numel() else 0.0
    if peak == 0 or not math.isfinite(peak):
        return x.clone()
    return fake_quantize(x, torch.tensor(peak / qmax(bits), dtype=x.dtype, device=x.device), bits)
