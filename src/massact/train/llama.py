"""A LLaMA-shaped language model whose attention design is one config field (`massact.train.variants`).

RMSNorm with per-channel gains (one scalar gain for `single-scale-norm`), SwiGLU MLP, rotary positions, no
biases, a head untied from the embedding. The module tree and parameter names are transformers'
`LlamaForCausalLM`'s (`model.layers[i].self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`, ...), so with
`attention="default"` its weights load into `LlamaForCausalLM` unchanged (`hf_config()` gives the config) and
massact finds the blocks as it finds any LLaMA's.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from massact.train.attention import VariantAttention, eager_attention_forward  # noqa: F401 (capture finds it here)
from massact.train.config import ModelConfig
from massact.train.lm import LabModel


class RMSNorm(nn.Module):
    """x / rms(x) times a gain per channel, or one gain for every channel (`single_scale`)."""

    def __init__(self, size: int, eps: float, single_scale: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1 if single_scale else size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def rotary_tables(config: ModelConfig, positions: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [positions, head_dim] of the rotary embedding (each frequency twice, as transformers)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    angles = torch.arange(positions, device=device).float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotated: x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + turned * sin.to(x.dtype)


class LlamaAttention(VariantAttention):
    """q, k, v and o projections without biases; rotary positions on q and k."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, gate_bias=False)
        width = config.n_embd
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = (
            proj(x).view(batch, tokens, self.n_head, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = rotate(q, *rotary), rotate(k, *rotary)
        return self.o_proj(self.attend(x, q, k, v))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        single = config.attention == "single-scale-norm"
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps, single)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps, single)
        self.mlp = LlamaMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), rotary))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class LlamaLM(LabModel):
    """The LLaMA-shaped language model; `forward(input_ids, attention_mask=None, labels=None)` like transformers."""

    arch = "llama"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        single = config.attention == "single-scale-norm"
        self.model = nn.ModuleDict(
            {
                "embed_tokens": nn.Embedding(config.vocab_size, config.n_embd),
                "layers": nn.ModuleList([LlamaBlock(config) for _ in range(config.n_layer)]),
                "norm": RMSNorm(config.n_embd, config.norm_eps, single),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):  # scaled init of residual writers
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.init_design_parameters([block.self_attn for block in self.blocks])

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.model.embed_tokens.weight.numel() if exclude_embeddings else total

    def hf_config(self) -> dict:
        """The transformers `LlamaConfig` fields of this model (its weights load into `LlamaForCausalLM`)."""
        config = self.config
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.n_embd,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            "num_key_value_heads": config.n_head,
            "max_position_embeddings": config.n_positions,
            "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 0,
        }

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        rotary = rotary_tables(self.config, x.shape[1], x.device)
        for block in self.model.layers:
            x = block(x, rotary)
        return self.model.norm(x)
