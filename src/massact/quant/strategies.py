"""Strategies against quantization error, and SmoothQuant's scales (the rotation is the rewrite's: `quant.rotate`).

- `none`: quantize as the scheme says;
- `outlier-tokens`: the tokens that carry massive activations (learned on calibration windows: the
  first position and/or token ids) stay in full precision in Linear inputs and the KV cache, and are
  left out of the per-tensor scales;
- `smooth`: SmoothQuant's per-input-channel scales `s = max|x|^alpha / max|W|^(1 - alpha)`, applied
  exactly (`x / s` on the input, `W * s` on the weight columns);
- `rotate`: the rewrite `massact rewrite --rotate` folds (`quant.rotate`): norm gains folded into the Linears
  that read them and the residual stream rotated by `H` (embeddings, the readers' inputs, the writers' outputs,
  the LM head), `H` a randomized Hadamard matrix where a Hadamard order of the width is built (576, 768, every
  power of two, ...), otherwise a seeded random orthogonal matrix (`massact.rotations`); o_proj and down_proj
  inputs stay as they are. Refused, with the rewrite's reason, where the rewrite refuses the model;
- `keep-super-weights`: the weight entries `massact trace` ranks as writers of the massive activations
  stay in full precision (and out of their row's or group's scale).

Strategies combine with `+` (`outlier-tokens+smooth`); `best` tries the combinations that matter for a
scheme on the calibration windows and keeps the one with the lowest perplexity there.
"""

from __future__ import annotations

from massact.errors import MassactError
from massact.quant.schemes import Scheme
from massact.residual.transform import smooth_scales  # noqa: F401 (quant's name for it)

PARTS = ("outlier-tokens", "smooth", "rotate", "keep-super-weights")
NAMES = ("none", *PARTS, "best")
BEST = "best"


def parse_strategy(text: str) -> str:
    """`smooth+outlier-tokens` -> the canonical name `outlier-tokens+smooth` (parts in a fixed order)."""
    name = text.strip().lower()
    if name in ("none", BEST):
        return name
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in PARTS]
    if not name or unknown:
        raise MassactError(
            f"strategy {text!r} is not known; use {', '.join(NAMES)}, or parts joined by + (outlier-tokens+smooth)"
        )
    if "smooth" in parts and "rotate" in parts:
        raise MassactError(f"strategy {text!r}: smooth and rotate are alternatives; give one of them")
    if "rotate" in parts and "keep-super-weights" in parts:
        raise MassactError(f"strategy {text!r}: rotation mixes every weight column, so no super weight stays whole")
    return "+".join(p for p in PARTS if p in parts)


def parts(strategy: str) -> set[str]:
    """The parts of a canonical strategy name (empty for `none`)."""
    return set() if strategy == "none" else set(strategy.split("+"))


def candidates(scheme: Scheme) -> list[str]:
    """The strategies `best` tries for `scheme`: only parts that can change its result."""
    tokens = scheme.act_bits is not None or scheme.kv_bits is not None
    channels = scheme.quantizes_linears
    supers = scheme.weight_bits is not None
    names = ["none"]
    for token_part in (False, True) if tokens else (False,):
        for channel_part in (None, "smooth", "rotate") if channels else (None,):
            for super_part in (False, True) if supers else (False,):
                chosen = [p for p in ("outlier-tokens" if token_part else None, channel_part) if p]
                if super_part and channel_part != "rotate":
                    chosen.append("keep-super-weights")
                if chosen:
                    names.append(parse_strategy("+".join(chosen)))
    return list(dict.fromkeys(names))
