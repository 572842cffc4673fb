"""`massact attention` on the trained GPT-2 variants: the sink token and the explicit bias key k'.

With every query zeroed, attention is uniform over the keys each query can see, so the answers are
known exactly: query i of T sees i + 1 tokens, plus k' in the bias variant.
"""

from __future__ import annotations

import pytest
import torch

from massact.attention.analyze import AttentionConfig, analyze
from massact.models.structure import find_structure
from massact.train.gpt2 import GPT2, GPT2Config

T = 10


def uniform_model(attention: str) -> GPT2:
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16, attention=attention))
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:16] = 0.0  # queries are the first n_embd outputs
            block.attn.c_attn.bias[:16] = 0.0
    return model.eval()


def _mean_inverse(offset: int, queries: int) -> float:
    return sum(1.0 / (i + offset) for i in range(queries)) / queries


@pytest.mark.parametrize(
    "attention,positions,first_importance,extra_mass",
    [
        ("default", T, _mean_inverse(1, T), None),
        ("sink", T + 1, _mean_inverse(1, T + 1), None),  # the sink token is position 0
        ("bias", T, _mean_inverse(2, T), _mean_inverse(2, T)),  # k' takes as much as token 0
    ],
)
def test_uniform_attention_measures_are_exact(attention, positions, first_importance, extra_mass):
    model = uniform_model(attention)
    ids = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(1))
    result = analyze(model, find_structure(model), ids, AttentionConfig(sinks=[0]))
    assert len(result.tokens) == positions
    if attention == "sink":
        assert result.tokens[0] == "<extra>"
    for row in result.to_json()["blocks"]:
        assert row["first_token_importance"] == pytest.approx(first_importance, rel=1e-5)
        if extra_mass is None:
            assert "extra_key_mass" not in row
        else:
            assert row["extra_keys"] == 1
            assert row["extra_key_mass"] == pytest.approx(extra_mass, rel=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored after the capture
