"""The perplexity evaluator against a plain transformers loss, on a tiny random LLaMA."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from massact.errors import MassactError
from massact.perplexity import evaluate_perplexity


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=80,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 80, (7, 24), generator=torch.Generator().manual_seed(3))


def transformers_nll(model, ids, prefix_len: int = 0) -> float:
    """Mean token NLL from the model's own loss, one window at a time (each has the same token count)."""
    labels = ids.clone()
    labels[:, :prefix_len] = -100  # the prefix is never a target
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=y[None]).loss.double() for w, y in zip(ids, labels, strict=True)]
    return float(torch.stack(losses).mean())


def test_agrees_with_transformers_loss(model, ids):
    result = evaluate_perplexity(model, ids, batch_size=3, progress=False)
    reference = transformers_nll(model, ids)
    assert result.tokens == 7 * 23
    assert result.nll == pytest.approx(reference, rel=1e-6, abs=1e-6)
    assert result.perplexity == pytest.approx(math.exp(reference), rel=1e-6)
    assert result.nonfinite_tokens == 0


@pytest.mark.parametrize("prefix_len", [1, 2, 5])
def test_prefix_tokens_are_not_scored(model, ids, prefix_len):
    """Only text tokens are targets: positions >= max(1, prefix_len), as transformers' loss with -100 labels."""
    result = evaluate_perplexity(model, ids, batch_size=4, progress=False, prefix_len=prefix_len)
    assert result.tokens == 7 * (24 - max(1, prefix_len))
    assert result.nll == pytest.approx(transformers_nll(model, ids, prefix_len), rel=1e-6, abs=1e-6)
    if prefix_len > 1:
        assert result.nll != pytest.approx(evaluate_perplexity(model, ids, progress=False).nll, rel=1e-6)


def test_prefix_as_long_as_the_window_is_refused(model, ids):
    with pytest.raises(MassactError, match="windows of shape"):
        evaluate_perplexity(model, ids[:, :3], progress=False, prefix_len=3)


def test_batch_size_does_not_change_the_result(model, ids):
    results = [evaluate_perplexity(model, ids, batch_size=b, progress=False).nll for b in (1, 2, 7, 16)]
    assert max(results) - min(results) < 1e-6


def test_token_weighting_across_windows(model, ids):
    """Two halves weigh by their token counts: the mean of per-window means equals the overall mean."""
    first = evaluate_perplexity(model, ids[:2], progress=False)
    rest = evaluate_perplexity(model, ids[2:], progress=False)
    both = evaluate_perplexity(model, ids, progress=False)
    weighted = (first.nll * first.tokens + rest.nll * rest.tokens) / (first.tokens + rest.tokens)
    assert both.nll == pytest.approx(weighted, rel=1e-6)
    assert both.tokens == first.tokens + rest.tokens == 7 * 23


def test_bfloat16_model_is_close_to_float32(model, ids):
    low = LlamaForCausalLM(model.config).eval()
    low.load_state_dict(model.state_dict())
    low = low.to(torch.bfloat16)
    full = evaluate_perplexity(model, ids, progress=False).nll
    half = evaluate_perplexity(low, ids, progress=False).nll
    assert half == pytest.approx(full, rel=0.02)


def test_nan_is_reported_not_raised(model, ids):
    broken = LlamaForCausalLM(model.config).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.lm_head.weight[5, 0] = float("nan")
    result = evaluate_perplexity(broken, ids, progress=False)
    assert math.isnan(result.perplexity) and math.isnan(result.nll)
    assert result.nonfinite_tokens == result.tokens


class FixedLogits(torch.nn.Module):
    """A stand-in LM whose logits are 0 everywhere except `value` for token 5."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, 80)
        logits[..., 5] = self.value
        return type("Output", (), {"logits": logits})()


def test_infinite_nll_and_overflow_give_infinite_perplexity():
    fives = torch.full((2, 6), 5)
    result = evaluate_perplexity(FixedLogits(float("-inf")), fives, progress=False)
    assert result.perplexity == math.inf and result.nll == math.inf and result.nonfinite_tokens == 10
    result = evaluate_perplexity(FixedLogits(-1000.0), fives, progress=False)
    assert result.perplexity == math.inf and result.nll == pytest.approx(1000 + math.log(79), rel=1e-6)
    assert result.nonfinite_tokens == 0


def test_bad_windows(model):
    with pytest.raises(MassactError, match="windows of shape"):
        evaluate_perplexity(model, torch.zeros(3, 1, dtype=torch.long), progress=False)
