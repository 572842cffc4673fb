"""The extreme-token measures against hand-computed values, and the Bigram-Backcopy sequences against their rules."""

from __future__ import annotations

import math

import pytest
import torch

from massact.train.backcopy import BOS, BackcopyTask
from massact.train.gpt2 import GPT2, GPT2Config
from massact.train.measures import excess_kurtosis, extreme_token_measures, first_attention, peak_ratio


def test_first_attention_by_hand():
    probs = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
            [[1.0, 0.0, 0.0], [0.4, 0.4, 0.0], [0.1, 0.1, 0.6]],  # rows sum to 0.8: a sink logit took 0.2
        ]
    ).unsqueeze(0)
    torch.testing.assert_close(first_attention(probs), torch.tensor([(0.5 + 0.2) / 2, (0.4 + 0.1) / 2]))
    torch.testing.assert_close(first_attention(probs, learned_sink=True), torch.tensor([0.35, (0.6 + 0.3) / 2]))


def test_peak_ratio_and_kurtosis_by_hand():
    from scipy.stats import kurtosis  # imported here: scipy.stats costs every test worker 0.7 s to collect

    norms = torch.tensor([[10.0, 1.0, 2.0, 4.0], [3.0, 3.0, 6.0, 1.0]])
    assert peak_ratio(norms) == pytest.approx((10 / 2 + 3 / 3) / 2)
    assert excess_kurtosis(torch.tensor([1.0, -1.0, 1.0, -1.0])) == pytest.approx(-2.0)  # m4 / m2^2 = 1
    x = torch.randn(500, generator=torch.Generator().manual_seed(0)) ** 3
    assert excess_kurtosis(x) == pytest.approx(float(kurtosis(x.numpy(), fisher=True, bias=True)), rel=1e-6)


def planted_model(attention: str, layers: int = 2) -> GPT2:
    """Queries zeroed (uniform attention over the visible keys), attention and MLP outputs zeroed
    (every block output is the embedding), and token 3's embedding made large."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=16, block_size=16, n_layer=layers, n_head=2, n_embd=8, attention=attention))
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:8] = 0.0
            block.attn.c_attn.bias[:8] = 0.0
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wte.weight[3] *= 40.0
    return model.eval()


@pytest.mark.parametrize(("tokens", "sink_rate"), [(5, 1.0), (6, 0.0)])
def test_uniform_attention_gives_the_known_sink_rate(tokens, sink_rate):
    """Query i sees i + 1 keys: mean over i = 1..T-1 of 1 / (i + 1) is 0.321 for T = 5 and 0.290 for T = 6."""
    model = planted_model("default")
    ids = torch.tensor([[3, 1, 2, 5, 7, 9][:tokens]])
    expected = sum(1 / (i + 1) for i in range(1, tokens)) / (tokens - 1)
    for row in extreme_token_measures(model, ids):
        assert row["head_first_attention"] == pytest.approx([expected, expected], rel=1e-5)
        assert row["sink_rate"] == sink_rate


def test_residual_peak_value_drain_and_kurtosis_equal_a_computation_by_hand():
    model = planted_model("default")
    ids = torch.tensor([[3, 1, 2, 5, 7], [3, 9, 9, 4, 1]])
    rows = extreme_token_measures(model, ids)
    torch.set_grad_enabled(False)
    hidden = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(5))  # every block's output
    norms = hidden.norm(dim=-1)
    peak = float(sum(norms[b, 0] / norms[b, 1:].sort().values[1] for b in range(2)) / 2)  # median of 4: 2nd
    centred = hidden.double().flatten() - hidden.double().mean()
    kurt = float((centred**4).mean() / (centred**2).mean() ** 2 - 3)
    block = model.transformer.h[1]
    values = block.attn.c_attn(block.ln_1(hidden))[..., 16:].norm(dim=-1)
    drain = float(sum(values[b, 0] / values[b, 1:].sort().values[1] for b in range(2)) / 2)
    torch.set_grad_enabled(True)
    assert peak > 5  # the planted token stands out
    assert rows[1]["residual_peak"] == pytest.approx(peak, rel=1e-5)
    assert rows[1]["kurtosis"] == pytest.approx(kurt, rel=1e-5)
    assert rows[1]["value_drain"] == pytest.approx(drain, rel=1e-5)


def test_a_learned_sink_counts_with_the_first_token():
    """With uniform scores, query i gives token 0 and the sink (logit s) (1 + e^s) / (i + 1 + e^s) together."""
    model = planted_model("sink-logit", layers=1)
    with torch.no_grad():
        model.transformer.h[0].attn.sink_logit.copy_(torch.tensor([0.0, math.log(3.0)]))
    tokens = 8
    rows = extreme_token_measures(model, torch.arange(1, tokens + 1).unsqueeze(0))
    expected = [sum((1 + e) / (i + 1 + e) for i in range(1, tokens)) / (tokens - 1) for e in (1.0, 3.0)]
    assert rows[0]["head_first_attention"] == pytest.approx(expected, rel=1e-5)


def test_backcopy_sequences_follow_their_rules():
    task = BackcopyTask(vocab_size=20, triggers=3, concentration=0.3, seed=5)
    ids = task.sample(400, 24, seed=1)
    assert torch.equal(ids, task.sample(400, 24, seed=1)) and not torch.equal(ids, task.sample(400, 24, seed=2))
    assert bool((ids[:, 0] == BOS).all()) and bool((ids[:, 1:] != BOS).all())
    assert not bool(task.is_trigger(ids[:, 1]).any())
    after = task.is_trigger(ids[:, 1:-1])
    assert bool((ids[:, 2:][after] == ids[:, :-2][after]).all())  # after a trigger: the token before it
    # elsewhere the bigram table: empirical next-token frequencies of the most frequent token match its row
    previous, following = ids[:, 1:-1][~after], ids[:, 2:][~after]
    token = int(torch.mode(previous).values)
    counts = torch.bincount(following[previous == token], minlength=20).float()
    assert counts.sum() > 300
    assert (counts / counts.sum() - task.bigram[token]).abs().max() < 0.08
    assert torch.allclose(task.bigram.sum(-1), torch.ones(20)) and bool((task.bigram[:, BOS] == 0).all())


def test_backcopy_optimal_loss_by_hand():
    task = BackcopyTask(vocab_size=8, triggers=1, seed=0)
    trigger = int(task.trigger_ids[0])
    first = next(t for t in range(1, 8) if t != trigger)
    ids = torch.tensor([[BOS, first, trigger, first]])
    row = task.bigram[first]
    entropy = float(-(row[row > 0] * row[row > 0].log()).sum())
    # three predictions: the first token (uniform over 6 non-triggers), a bigram step, a copy (free)
    assert task.optimal_loss(ids) == pytest.approx((math.log(6) + entropy + 0.0) / 3, rel=1e-5)
    assert task.tokenizer().decode(ids[0]).split() == ["<bos>", f"t{first}", f"T{trigger}", f"t{first}"]
