"""`massact attention` on every design of the registry (`ATTENTION_VARIANTS`), on both architectures.

GPT-2: every query and every key is the same constant vector (their weights zeroed, their biases set), so
each query gives every key it sees one score c = ln 2. LLaMA (no biases, rotary positions): every query is
zero, so every score is c = 0. Each variant's probabilities are then known by hand: query i sees n = i + 1
tokens (plus the sink token, k' or the learned sink logit where the variant has one).
"""

from __future__ import annotations

import math

import pytest
import torch

from massact.attention import AttentionConfig, run
from massact.models.loading import LoadedModel
from massact.train.build import build_model
from massact.train.gpt2 import ATTENTION_VARIANTS, GPT2, SOFTPICK_EPS, GPT2Config

T = 10
SCORES = {"gpt2": math.log(2.0), "llama": 0.0}  # every score c: e^c - 1 = 1 on GPT-2, 0 on LLaMA


def sink_logits(c: float) -> tuple[float, float]:
    """sink-logit's s per head: exp(s - c) = 3 and 1/e."""
    return (c + math.log(3.0), c - 1.0)


def constant_score_model(attention: str, arch: str = "gpt2") -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16, attention=attention, arch=arch)
    model = build_model(config)
    if arch == "llama":
        with torch.no_grad():
            for block in model.blocks:
                block.self_attn.q_proj.weight.zero_()  # q = 0: every score 0, also k''s
                if block.self_attn.sink_logit is not None:
                    block.self_attn.sink_logit.copy_(torch.tensor(sink_logits(0.0)))
        return model
    e, d = model.config.n_embd, model.config.head_dim
    C = SCORES["gpt2"]
    with torch.no_grad():
        for block in model.transformer.h:
            attn = block.attn
            attn.c_attn.weight[: 2 * e] = 0.0  # queries, then keys: the first 2 n_embd outputs
            attn.c_attn.bias[: 2 * e] = 0.0
            for head in range(model.config.n_head):
                attn.c_attn.bias[head * d] = C * math.sqrt(d)  # q = (c sqrt(d), 0, ...)
                attn.c_attn.bias[e + head * d] = 1.0  # k = (1, 0, ...): q.k / sqrt(d) = c
            if attn.k_bias is not None:
                attn.k_bias.zero_()
                attn.k_bias[:, 0] = 1.0  # k' like every key
            if attn.sink_logit is not None:
                attn.sink_logit.copy_(torch.tensor(sink_logits(C)))
    return model.eval()


def first_token_probability(attention: str, n: torch.Tensor, head: int, c: float) -> torch.Tensor:
    """What query i (seeing n = i + 1 tokens) gives token 0, from each variant's formula at score c."""
    softmax = ("default", "sink-token", "gated", "gated-head", "single-scale-norm")  # gates act on the output only
    if attention in softmax:
        return 1 / n
    if attention == "attn-bias":  # k' is one more key at score c
        return 1 / (n + 1)
    if attention == "sink-logit":  # e^c / (e^s + n e^c)
        return 1 / (math.exp(sink_logits(c)[head] - c) + n)
    if attention == "softmax1":  # e^c / (1 + n e^c)
        return 1 / (math.exp(-c) + n)
    if attention == "softpick":  # (e^c - 1) / (n |e^c - 1| + eps)
        lift = math.exp(c) - 1
        return lift / (n * abs(lift) + SOFTPICK_EPS)
    if attention == "sigmoid":  # sigmoid(c - log T) on every visible key
        return torch.full_like(n, 1 / (1 + T * math.exp(-c)))
    raise AssertionError(f"no expected value written for variant {attention!r}")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_attention_measures_of_every_variant_are_its_formula(attention, arch):
    model = constant_score_model(attention, arch)
    ids = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(1))
    result = run(LoadedModel(model), ids, AttentionConfig(sinks=[0]))
    positions = T + 1 if attention == "sink-token" else T  # the sink token is position 0
    assert len(result.tokens) == positions
    assert (result.tokens[0] == "<extra>") == (attention == "sink-token")
    n = torch.arange(1, positions + 1, dtype=torch.float64)
    per_head = [float(first_token_probability(attention, n, head, SCORES[arch]).mean()) for head in range(2)]
    for row in result.to_json()["blocks"]:
        assert row["per_head"]["first_importance"] == pytest.approx(per_head, rel=1e-5)
        assert row["first_token_importance"] == pytest.approx(sum(per_head) / 2, rel=1e-5)
        if attention == "attn-bias":  # k' takes as much as token 0
            assert row["extra_keys"] == 1 and row["extra_key_mass"] == pytest.approx(per_head[0], rel=1e-5)
        else:
            assert "extra_key_mass" not in row
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
