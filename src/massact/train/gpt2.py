"""GPT-2 with three kinds of attention, chosen by one config field.

- `default`: plain causal self-attention.
- `sink`: one learnable token is prepended to every sequence; it is position 0 of every
  block output, and it is dropped before the logits (so it never enters the loss).
- `bias`: every head attends over one extra learnable key k' and value v' that every query
  sees: softmax(Q [K; k']^T / sqrt(d)) [V; v'] (Sun et al. 2024, section 4). k', v' are the
  last key / value, so key position i is still text token i.

The module tree follows GPT-2 (`transformer.h` is the list of blocks, each with `attn` and
`mlp`), so massact finds the blocks without any model-specific code. Attention runs through
PyTorch's fused SDPA; `set_attn_implementation("eager")` (or any name registered with
transformers' `AttentionInterface`) routes it through that function instead, the way
transformers models do, which is how `massact attention` reads the probabilities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import CausalLMOutput

from massact.errors import MassactError

ATTENTION_VARIANTS = ("default", "sink", "bias")


@dataclass
class GPT2Config:
    """Shape of the model; `attention` picks the variant."""

    vocab_size: int = 50304
    block_size: int = 1024  # longest input, in text tokens
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    attention: str = "default"
    _attn_implementation = "sdpa"  # not a field: how attention runs, not what the model is

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_VARIANTS:
            raise MassactError(
                f"unknown attention variant {self.attention!r}; use one of {', '.join(ATTENTION_VARIANTS)}"
            )
        if self.n_embd % self.n_head:
            raise MassactError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_positions(self) -> int:
        """Position embeddings needed: one more than `block_size` for the sink token."""
        return self.block_size + (1 if self.attention == "sink" else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GPT2Config:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


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
    """Attention written out: softmax(q k^T * scaling + mask) v. Returns ([B, T, H, D] output, probabilities)."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = F.softmax(scores.float(), dim=-1).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through PyTorch's fused SDPA; optional explicit bias k', v'."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.attention == "bias":
            self.k_bias = nn.Parameter(torch.zeros(config.n_head, config.head_dim))
            self.v_bias = nn.Parameter(torch.zeros(config.n_head, config.head_dim))
        else:
            self.k_bias = self.v_bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.c_attn(x).split(channels, dim=2)
        q, k, v = (t.view(batch, tokens, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
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
        if implementation == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout, is_causal=visible is None)
            y = y.transpose(1, 2)
        else:
            if visible is None:
                visible = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()
            mask = torch.zeros(visible.shape, dtype=q.dtype, device=x.device)
            mask = mask.masked_fill(~visible, torch.finfo(q.dtype).min)[None, None]
            function = eager_attention_forward if implementation == "eager" else _attention_function(implementation)
            y, _ = function(self, q, k, v, mask, scaling=self.head_dim**-0.5, dropout=dropout)
        return self.resid_dropout(self.c_proj(y.reshape(batch, tokens, channels)))


def _attention_function(name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 language model; `forward(input_ids, attention_mask=None, labels=None)` like transformers."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.n_positions, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": nn.LayerNorm(config.n_embd),
            }
        )
        self.sink_token = nn.Parameter(torch.zeros(config.n_embd)) if config.attention == "sink" else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        extras = [self.sink_token] if self.sink_token is not None else []
        for param in extras + self._attention_biases():
            nn.init.normal_(param, mean=0.0, std=0.02)

    def _attention_biases(self) -> list[nn.Parameter]:
        return [p for block in self.transformer.h for p in (block.attn.k_bias, block.attn.v_bias) if p is not None]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def num_extra_tokens(self) -> int:
        """Positions the model adds in front of the text (1 for the sink token, else 0)."""
        return 1 if self.sink_token is not None else 0

    def set_attn_implementation(self, name: str) -> None:
        """Run attention as "sdpa" (fused, default), "eager", or a function registered with transformers."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if name not in ("sdpa", "eager") and name not in ALL_ATTENTION_FUNCTIONS:
            raise ValueError(f"unknown attention implementation {name!r}")
        self.config._attn_implementation = name

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.transformer.wpe.weight.numel() if exclude_embeddings else total

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Logits for every text token; `labels` (shifted inside, -100 ignored) adds the LM loss.

        `attention_mask` is accepted for interface compatibility; the model is trained on
        unpadded windows and treats every token as real.
        """
        batch, tokens = input_ids.shape
        if tokens > self.config.block_size:
            raise MassactError(f"input has {tokens} tokens but the model takes at most {self.config.block_size}")
        extra = self.num_extra_tokens
        positions = torch.arange(tokens + extra, device=input_ids.device)
        x = self.transformer.wte(input_ids)
        if extra:
            x = torch.cat([self.sink_token.to(x.dtype).expand(batch, 1, -1), x], dim=1)
        x = self.transformer.drop(x + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x[:, extra:]))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)
