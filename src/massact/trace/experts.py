"""What each routed expert of a fused mixture-of-experts module writes on one token.

transformers 5 stores all experts of a block in one module with 3-D parameters (`gate_up_proj` or
`up_proj`, and `down_proj`, one slice per expert) and calls it as `experts(hidden, top_k_index,
top_k_weights)`. Per token, the module adds `router weight x expert output` over the chosen experts.
An expert's output is measured by calling the module itself with that one expert at weight 1; its
down-projection input (the intermediate activation) is rebuilt from the module's documented layout
attributes and kept only when `W_down h + b` reproduces the measured output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from massact.trace.linear import ExpertMatrix

# relative error allowed between the rebuilt and the measured expert output: float32 / 16-bit weights
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
LOW_PRECISION_TOLERANCE = 3e-2  # bfloat16 / float16 keep ~3 significant digits


@dataclass
class Routing:
    """The experts module's input on one token and the experts its router chose."""

    hidden: torch.Tensor  # [hidden] input of the experts module
    experts: list[int]
    weights: list[float]


def routing_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(hidden [N, H], top_k_index [N, k], top_k_weights [N, k]) from an experts module's call."""
    values = list(args) + [kwargs.get(k) for k in ("hidden_states", "top_k_index", "top_k_weights")][len(args) :]
    if len(values) < 3 or not all(isinstance(v, torch.Tensor) for v in values[:3]):
        return None
    hidden, index, weights = values[:3]
    return hidden.reshape(-1, hidden.shape[-1]), index.reshape(-1, index.shape[-1]), weights.reshape(index.shape)


@torch.no_grad()
def expert_output(module: nn.Module, x: torch.Tensor, expert: int) -> torch.Tensor:
    """Expert `expert`'s output on `x` [N, H], at router weight 1, by the module's own forward."""
    index = torch.full((x.shape[0], 1), expert, dtype=torch.long, device=x.device)
    weights = torch.ones((x.shape[0], 1), dtype=x.dtype, device=x.device)
    return module(x, index, weights)


def _project(module: nn.Module, name: str, x: torch.Tensor, expert: int) -> torch.Tensor:
    weight = getattr(module, name)[expert]
    y = x @ weight if getattr(module, "is_transposed", False) else x @ weight.t()
    bias = getattr(module, f"{name}_bias", None) if getattr(module, "has_bias", False) else None
    return y + bias[expert] if isinstance(bias, torch.Tensor) else y


@torch.no_grad()
def expert_hidden(module: nn.Module, x: torch.Tensor, expert: int) -> torch.Tensor | None:
    """The input of expert `expert`'s down-projection on `x` [N, H], or None when it cannot be rebuilt."""
    if getattr(module, "has_post_expert_norm", False) or not isinstance(
        getattr(module, "down_proj", None), nn.Parameter
    ):
        return None
    try:
        if getattr(module, "has_gate", True) and hasattr(module, "gate_up_proj"):
            return module._apply_gate(_project(module, "gate_up_proj", x, expert))
        if hasattr(module, "up_proj") and hasattr(module, "act_fn"):
            return module.act_fn(_project(module, "up_proj", x, expert))
    except (AttributeError, RuntimeError, TypeError):
        return None
    return None


@torch.no_grad()
def checked_hidden(matrix: ExpertMatrix, x: torch.Tensor) -> torch.Tensor | None:
    """`expert_hidden` when `W_down h + b` matches the module's own output on `x` [N, H]; else None."""
    hidden = expert_hidden(matrix.module, x, matrix.expert)
    if hidden is None:
        return None
    measured = expert_output(matrix.module, x, matrix.expert).float()
    bias = getattr(matrix.module, "down_proj_bias", None) if getattr(matrix.module, "has_bias", False) else None
    rebuilt = hidden.float() @ matrix.matrix().float().t()
    if isinstance(bias, torch.Tensor):
        rebuilt = rebuilt + bias[matrix.expert].float()
    scale = float(measured.abs().max()) or 1.0
    tolerance = TOLERANCE.get(matrix.matrix().dtype, LOW_PRECISION_TOLERANCE)
    return hidden if float((rebuilt - measured).abs().max()) <= tolerance * scale else None
