"""Shared fixtures: the bundled SmolLM2 (loaded once per session), its tokenizer alone, tiny saved LLaMAs."""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from massact.models.loading import LoadedModel

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:  # one torch thread per worker: no oversubscription
    import torch

    torch.set_num_threads(1)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported lives as long as the run: frozen out of the collector's sight.

    Each full collection then skips torch's and transformers' own objects: the collector's time per
    worker falls from about 4.5 s to 2.5 s of the inner loop.
    """
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The bundled default model, SmolLM2-135M-Instruct, float32 on CPU."""
    from massact.models.loading import load_model  # imported here: pytest's own process never needs torch

    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The bundled model's tokenizer alone (the model is not loaded: tests using it are not slow)."""
    from massact.train.data import smollm2_tokenizer

    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved 3-block LLaMA whose '.' carries a massive value, with its corpus (`planting.save_corpus_model`)."""
    from planting import save_corpus_model  # imported here: pytest's own process never needs torch

    return save_corpus_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A saved 2-block random LLaMA with the SmolLM2 tokenizer and a 64-token context."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path
