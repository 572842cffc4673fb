"""What both lab architectures share: the sink token in front, how attention runs, the language-model loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import CausalLMOutput

from massact.errors import MassactError
from massact.train.config import ModelConfig


class LabModel(nn.Module):
    """Base of `GPT2` and `LlamaLM`: `forward(input_ids, attention_mask=None, labels=None)` like transformers.

    `attention_mask` is accepted for interface compatibility; the models are trained on unpadded windows
    and treat every token as real.
    """

    arch = ""  # the `ModelConfig.arch` a subclass builds

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != self.arch:
            raise MassactError(f"{type(self).__name__} takes a {self.arch} config, not `arch={config.arch!r}`")
        self.config = config
        prefix = config.attention == "sink-token"
        self.sink_token = nn.Parameter(torch.zeros(config.n_embd)) if prefix else None

    def init_design_parameters(self, attentions: list[nn.Module]) -> None:
        """The sink token and every block's k', v' drawn like the weights (sink logits start at 0)."""
        extras = [self.sink_token] if self.sink_token is not None else []
        for param in extras + [p for attention in attentions for p in attention.variant_parameters()]:
            nn.init.normal_(param, mean=0.0, std=0.02)

    @property
    def num_extra_tokens(self) -> int:
        """Positions the model adds in front of the text (1 for the sink token, else 0)."""
        return 1 if self.sink_token is not None else 0

    def set_attn_implementation(self, name: str) -> None:
        """Run attention as "sdpa" (fused, default), "eager", or a function registered with transformers."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if name not in ("sdpa", "eager") and name not in ALL_ATTENTION_FUNCTIONS:
            raise ValueError(f"unknown attention implementation {name!r}")
        object.__setattr__(self.config, "_attn_implementation", name)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, C] (a subclass's embedding table)."""
        raise NotImplementedError

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Positions, the blocks and the final norm over the embedded sequence [B, P, C] (a subclass's)."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Logits for every text token; `labels` (shifted inside, -100 ignored) adds the next-token loss."""
        batch, tokens = input_ids.shape
        if tokens > self.config.block_size:
            raise MassactError(f"input has {tokens} tokens but the model takes at most {self.config.block_size}")
        x = self.embed(input_ids)
        if self.sink_token is not None:  # the sink token first; it never reaches the logits
            x = torch.cat([self.sink_token.to(x.dtype).expand(batch, 1, -1), x], dim=1)
        logits = self.lm_head(self.body(x)[:, self.num_extra_tokens :])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)
