"""GPT-2 whose attention design is one config field (`massact.train.variants` lists and defines them).

LayerNorm (one scalar gain for `single-scale-norm`), GELU MLP, learned positions, biases, a head tied to the
embedding. The module tree follows GPT-2 (`transformer.h` is the list of blocks, each with `attn` and
`mlp`), so massact finds the blocks without any model-specific code. How attention runs (fused SDPA,
eager, or a function registered with transformers) is `massact.train.attention`'s.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from massact.defaults import ATTENTION_VARIANTS  # noqa: F401 (the names, re-exported)
from massact.train.attention import VariantAttention, eager_attention_forward  # noqa: F401 (capture finds it here)
from massact.train.config import ModelConfig
from massact.train.lm import LabModel
from massact.train.variants import SOFTPICK_EPS, attention_weights, check_variant  # noqa: F401 (re-exported)

GPT2Config = ModelConfig  # the model config's earlier name


class CausalSelfAttention(VariantAttention):
    """GPT-2's fused q, k, v projection and output projection, with biases."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.c_attn(x).split(channels, dim=2)
        q, k, v = (t.view(batch, tokens, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        return self.resid_dropout(self.c_proj(self.attend(x, q, k, v)))


class ScalarGainLayerNorm(nn.LayerNorm):
    """LayerNorm with one gain for every channel (its bias stays per channel): GPT-2's `single-scale-norm`."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__(size, eps=eps)
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, None, self.bias, self.eps) * self.weight


def layer_norm(config: ModelConfig) -> nn.LayerNorm:
    if config.attention == "single-scale-norm":
        return ScalarGainLayerNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.intermediate_size)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(config.intermediate_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = layer_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(LabModel):
    """GPT-2 language model; `forward(input_ids, attention_mask=None, labels=None)` like transformers."""

    arch = "gpt2"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.n_positions, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": layer_norm(config),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.init_design_parameters([block.attn for block in self.transformer.h])

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.transformer.wpe.weight.numel() if exclude_embeddings else total

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(input_ids)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        x = self.transformer.drop(x + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)
