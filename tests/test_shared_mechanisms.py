"""Mechanisms that exist once and serve several analyses: the round trip that quant's schemes and the int8 risk
table both use, and the spread over seeds that quant's `--seeds` and the trained-variants experiment both use."""

from __future__ import annotations

import math

import pytest
import torch

from massact.capture.risk import INT8_BITS, BlockRisk
from massact.detect import Thresholds
from massact.fakequant import fake_quantize, qmax, round_trip
from massact.quant.schemes import quantize_activation
from massact.quant.seeds import summarize
from massact.report.spread import moments, spread
from massact.train.report import MEASURES, summarize_variants


def test_the_risk_round_trip_is_quants_per_tensor_int8():
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(1)) * 3
    x[1, 2] = 500.0
    assert torch.equal(round_trip(x, 8), quantize_activation(x, 8, "tensor"))
    by_hand = torch.clamp(torch.round(x / (500.0 / 127)), -127, 127) * (500.0 / 127)
    assert torch.allclose(round_trip(x, 8), by_hand, rtol=0, atol=1e-4)
    assert qmax(INT8_BITS) == 127 and qmax(4) == 7
    assert torch.equal(fake_quantize(torch.tensor([0.0, 1.0]), torch.tensor(0.0), 8), torch.tensor([0.0, 1.0]))


def test_the_risk_table_errors_come_from_that_round_trip():
    x = torch.tensor([1.0, -2.0, 3.0, 0.5, 12700.0])  # one massive entry sets the scale to 100
    risk = BlockRisk()
    risk.add(x, Thresholds(abs=100, ratio=10))
    ordinary = x[:4]
    with_massive = round_trip(x, 8)[:4]  # every ordinary value rounds to 0 under a scale of 100
    assert torch.equal(with_massive, torch.zeros(4))
    row = risk.row(0)
    assert row["int8_error_with"] == pytest.approx(1.0)
    expected = float((ordinary - round_trip(ordinary, 8)).pow(2).sum() / ordinary.pow(2).sum()) ** 0.5
    assert row["int8_error_without"] == pytest.approx(expected)
    assert row["zeroed_with"] == 1.0


def test_one_spread_for_quant_seeds_and_trained_variants():
    assert moments([1.0, 2.0, 6.0]) == {"mean": 3.0, "std": pytest.approx(math.sqrt(7.0)), "min": 1.0, "max": 6.0}
    assert moments([5.0]) == {"mean": 5.0, "std": 0.0, "min": 5.0, "max": 5.0}
    assert all(math.isnan(v) for v in moments([1.0, math.inf]).values())
    assert spread([1.0, 3.0]) == {"values": [1.0, 3.0], **moments([1.0, 3.0])}
    draws = [[{"scheme": "W8", "strategy": "none", "perplexity": p, "ratio": p / 10}] for p in (11.0, 15.0)]
    quant = summarize([1, 2], [10.0, 14.0], draws)
    assert quant["rows"][0]["perplexity"] == spread([11.0, 15.0])
    assert quant["baseline"] == spread([10.0, 14.0]) and quant["baseline"]["std"] == pytest.approx(math.sqrt(8.0))
    rows = [{"variant": "default", **dict.fromkeys(MEASURES, float(seed))} for seed in (1, 3)]
    trained = summarize_variants(rows)["default"]
    assert trained["seeds"] == 2 and all(trained[m] == moments([1.0, 3.0]) for m in MEASURES)
