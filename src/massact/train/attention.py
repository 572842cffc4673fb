"""Attention of a registered design (`variants.py`), shared by both architectures.

`VariantAttention` holds the design's own parameters (k', v', the sink logit, the output gate) and
`attend(x, q, k, v)` runs the heads: softmax designs through PyTorch's fused SDPA, the others through
`eager_attention_forward`. `set_attn_implementation("eager")` on the model (or any name registered with
transformers' `AttentionInterface`) routes every design through that function instead, the way
transformers models do, which is how `massact attention` reads the probabilities. Each architecture's
module file imports `eager_attention_forward`, where `massact.attention.capture` looks for it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from massact.train.variants import attention_weights, get_variant


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out: weights(q k^T * scaling, mask) v. Returns ([B, T, H, D] output, weights).

    The weights are the module's design (`variants.attention_weights`); `attention_mask` is additive.
    """
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    if attention_mask is None:
        visible = torch.ones(1, dtype=torch.bool, device=scores.device)
    elif attention_mask.dtype == torch.bool:
        visible = attention_mask
    else:
        visible = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    variant = getattr(getattr(module, "config", None), "attention", "default")
    probs = attention_weights(variant, scores, visible, getattr(module, "sink_logit", None)).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _attention_function(name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


class VariantAttention(nn.Module):
    """The heads of one block with the config's design; subclasses make q, k, v and project the output."""

    def __init__(self, config, gate_bias: bool = True) -> None:
        super().__init__()
        self.config = config
        self.variant = get_variant(config.attention)
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.k_bias = self.v_bias = self.sink_logit = self.c_gate = None
        if self.variant.extra_key:
            self.k_bias = nn.Parameter(torch.zeros(config.n_head, config.head_dim))
            self.v_bias = nn.Parameter(torch.zeros(config.n_head, config.head_dim))
        if self.variant.sink_logit:
            self.sink_logit = nn.Parameter(torch.zeros(config.n_head))
        if self.variant.gate is not None:
            gates = config.n_embd if self.variant.gate == "element" else config.n_head
            self.c_gate = nn.Linear(config.n_embd, gates, bias=gate_bias)

    def attend(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Heads [B, H, T, D] -> the gated attention output [B, T, H * D] (before the output projection)."""
        batch, _, tokens, _ = q.shape
        dropout = self.dropout if self.training else 0.0
        visible = None
        if self.k_bias is not None:  # k', v' are one more key / value at the end, visible to every query
            k_extra = self.k_bias.to(k.dtype).view(1, self.n_head, 1, self.head_dim).expand(batch, -1, -1, -1)
            v_extra = self.v_bias.to(v.dtype).view(1, self.n_head, 1, self.head_dim).expand(batch, -1, -1, -1)
            k = torch.cat([k, k_extra], dim=2)
            v = torch.cat([v, v_extra], dim=2)
            visible = torch.ones(tokens, tokens + 1, dtype=torch.bool, device=x.device).tril()
            visible[:, -1] = True
        implementation = self.config._attn_implementation
        if implementation == "sdpa" and self.variant.softmax:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout, is_causal=visible is None)
            y = y.transpose(1, 2)
        else:
            if visible is None:
                visible = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()
            mask = torch.zeros(visible.shape, dtype=q.dtype, device=x.device)
            mask = mask.masked_fill(~visible, torch.finfo(q.dtype).min)[None, None]
            eager = implementation in ("sdpa", "eager")
            function = eager_attention_forward if eager else _attention_function(implementation)
            y, _ = function(self, q, k, v, mask, scaling=self.head_dim**-0.5, dropout=dropout)
        if self.c_gate is not None:  # [B, T, H, 1] per head or [B, T, H, D] per element
            y = y * torch.sigmoid(self.c_gate(x)).view(batch, tokens, self.n_head, -1)
        return y.reshape(batch, tokens, self.n_head * self.head_dim)

    def variant_parameters(self) -> list[nn.Parameter]:
        """k', v' (initialised like the weights; the sink logit starts at 0 and the gate as a linear layer)."""
        return [p for p in (self.k_bias, self.v_bias) if p is not None]
