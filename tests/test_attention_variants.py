"""`massact attention` on the trained GPT-2 variants: the sink token and the explicit bias key k'.

With every query zeroed, attention is uniform over the keys each query can see, so the answers are
known exactly: query i of T sees i + 1 tokens, plus k' in the bias variant.
"""

from __future__ import annotations

import pytest
import torch

from massact.attention import AttentionConfig, run
from massact.models.loading import LoadedModel
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
        ("sink-token", T + 1, _mean_inverse(1, T + 1), None),  # the sink token is position 0
        ("attn-bias", T, _mean_inverse(2, T), _mean_inverse(2, T)),  # k' takes as much as token 0
    ],
)
def test_uniform_attention_measures_are_exact(attention, positions, first_importance, extra_mass):
    model = uniform_model(attention)
    ids = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(1))
    result = run(LoadedModel(model), ids, AttentionConfig(sinks=[0]))
    assert len(result.tokens) == positions
    if attention == "sink-token":
        assert result.tokens[0] == "<extra>"
    for row in result.to_json()["blocks"]:
        assert row["first_token_importance"] == pytest.approx(first_importance, rel=1e-5)
        if extra_mass is None:
            assert "extra_key_mass" not in row
        else:
            assert row["extra_keys"] == 1
            assert row["extra_key_mass"] == pytest.approx(extra_mass, rel=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored after the capture


def test_default_equals_transformers_gpt2():
    """The default variant with a transformers GPT-2's weights gives its logits and block outputs (float64, 1e-6)."""
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    ours = GPT2(GPT2Config(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32)).double().eval()
    hf_config = HFConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new")
    hf_config.resid_pdrop = hf_config.embd_pdrop = hf_config.attn_pdrop = 0.0
    theirs = GPT2LMHeadModel(hf_config).double().eval()
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if not name.startswith("lm_head"):  # tied to wte in both
                source = ours.get_parameter(name)
                conv1d = isinstance(theirs.get_submodule(name.rsplit(".", 1)[0]), Conv1D)
                param.copy_(source.T if conv1d and name.endswith("weight") else source)  # Conv1D is [in, out]
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(input_ids=ids, output_hidden_states=True)
        got = ours(input_ids=ids)
        hidden = []
        handle = ours.transformer.h[0].register_forward_hook(lambda m, a, o: hidden.append(o))
        ours(input_ids=ids)
        handle.remove()
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(hidden[0], expected.hidden_states[1], atol=1e-6, rtol=0)
