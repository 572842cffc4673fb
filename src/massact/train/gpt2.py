"""GPT-2 with its attention design chosen by one config field.

- `default`: plain causal softmax self-attention.
- `sink-token`: one learnable token is prepended to every sequence; it is position 0 of every
  block output, and it is dropped before the logits (so it never enters the loss).
- `attn-bias`: every head attends over one extra learnable key k' and value v' that every query
  sees: softmax(Q [K; k']^T / sqrt(d)) [V; v'] (Sun et al. 2024, section 4). k', v' are the
  last key / value, so key position i is still text token i.
- `sink-logit`: one learned logit s per head joins the softmax denominator and carries no value:
  p_i = exp(x_i) / (exp(s) + sum_j exp(x_j)) (GPT-OSS).
- `gated` / `gated-head`: the attention output is multiplied by sigmoid(x W_g + b_g) of the
  block's normed input, per element or one gate per head (Qiu et al. 2025, Qwen3-Next).
- `softmax1`: softmax with 1 added to its denominator (off-by-one; `sink-logit` with s = 0 fixed).
- `softpick`: relu(exp(x_i) - 1) / sum_j |exp(x_j) - 1| (Zuhri et al. 2025).
- `sigmoid`: sigmoid(x_i - log n) for the n keys, no normalisation (Ramapuram et al. 2024).

`sink` and `bias` are accepted as the earlier names of `sink-token` and `attn-bias`.

The module tree follows GPT-2 (`transformer.h` is the list of blocks, each with `attn` and
`mlp`), so massact finds the blocks without any model-specific code. Softmax variants run
through PyTorch's fused SDPA, the others through `eager_attention_forward`;
`set_attn_implementation("eager")` (or any name registered with transformers'
`AttentionInterface`) routes every variant through that function instead, the way
transformers models do, which is how `massact attention` reads the probabilities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import CausalLMOutput

from massact.defaults import ATTENTION_VARIANTS
from massact.errors import MassactError

OLD_NAMES = {"sink": "sink-token", "bias": "attn-bias"}
SOFTMAX_VARIANTS = ("default", "sink-token", "attn-bias", "gated", "gated-head")  # what SDPA computes
SOFTPICK_EPS = 1e-6


def check_variant(name: str) -> str:
    """The variant's name (earlier names mapped to the current ones); an unknown name is refused."""
    name = OLD_NAMES.get(name, name)
    if name not in ATTENTION_VARIANTS:
        raise MassactError(f"unknown attention variant {name!r}; use one of {', '.join(ATTENTION_VARIANTS)}")
    return name


@dataclass
class GPT2Config:
    """Shape of the model; `attention` picks the variant."""

    vocab_size: int = 50304  # tokens in the vocabulary
    block_size: int = 1024  # longest input, in text tokens
    n_layer: int = 12  # blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # hidden size
    dropout: float = 0.0  # dropout probability
    attention: str = "default"  # the attention variant, one of `ATTENTION_VARIANTS`
    _attn_implementation = "sdpa"  # not a field: how attention runs, not what the model is

    def __post_init__(self) -> None:
        self.attention = check_variant(self.attention)
        if self.n_embd % self.n_head:
            raise MassactError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_positions(self) -> int:
        """Position embeddings needed: one more than `block_size` for the sink token."""
        return self.block_size + (1 if self.attention == "sink-token" else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GPT2Config:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _with_extra_logit(scores: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys plus one value-less logit per head ([H]); the extra column is dropped."""
    extra = logit.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return F.softmax(torch.cat([scores, extra], dim=-1), dim=-1)[..., :-1]


def attention_weights(variant: str, scores: torch.Tensor, visible: torch.Tensor, sink_logit=None) -> torch.Tensor:
    """Weights of `variant` from scaled scores [B, H, T, S] and the bool mask of visible keys (broadcastable).

    Masked keys get weight 0. Softmax variants sum to 1 over the keys; `sink-logit` and `softmax1`
    leave the sink's share out; `softpick` and `sigmoid` are not normalised.
    """
    scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    if variant in SOFTMAX_VARIANTS:
        return F.softmax(scores, dim=-1)
    if variant == "sink-logit":
        return _with_extra_logit(scores, sink_logit)
    if variant == "softmax1":
        return _with_extra_logit(scores, scores.new_zeros(scores.shape[1]))
    if variant == "softpick":  # relu(e^x - 1) / sum|e^x - 1|, both sides times e^-m for stability
        top = scores.amax(dim=-1, keepdim=True).detach()
        shifted = (torch.exp(scores - top) - torch.exp(-top)) * visible
        denominator = shifted.abs().sum(dim=-1, keepdim=True) + SOFTPICK_EPS * torch.exp(-top)
        return F.relu(shifted) / denominator
    if variant == "sigmoid":
        return torch.sigmoid(scores - math.log(scores.shape[-1])) * visible
    raise ValueError(f"unknown attention variant {variant!r}")


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

    The weights are the module's variant (`attention_weights`); `attention_mask` is additive.
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


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention of the config's variant (its extra parameters live here)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.k_bias = self.v_bias = self.sink_logit = self.c_gate = None
        if config.attention == "attn-bias":
            self.k_bias = nn.Parameter(torch.zeros(config.n_head, config.head_dim))
            self.v_bias = nn.Parameter(torch.zeros(config.n_head, config.head_dim))
        elif config.attention == "sink-logit":
            self.sink_logit = nn.Parameter(torch.zeros(config.n_head))
        elif config.attention in ("gated", "gated-head"):
            gates = config.n_embd if config.attention == "gated" else config.n_head
            self.c_gate = nn.Linear(config.n_embd, gates)

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
        if implementation == "sdpa" and self.config.attention in SOFTMAX_VARIANTS:
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
        sink = config.attention == "sink-token"
        self.sink_token = nn.Parameter(torch.zeros(config.n_embd)) if sink else None
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
        """The explicit k', v' of every block (the sink logits start at 0 and the gates as linear layers)."""
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
