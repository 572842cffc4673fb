"""The model a `ModelConfig` describes: GPT-2-shaped or LLaMA-shaped."""

from __future__ import annotations

from torch import nn

from massact.train.config import ModelConfig


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model of `config.arch` (seed torch first for a reproducible one)."""
    if config.arch == "llama":
        from massact.train.llama import LlamaLM

        return LlamaLM(config)
    from massact.train.gpt2 import GPT2

    return GPT2(config)
