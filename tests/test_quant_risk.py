"""Quantization-risk table: exact int8 round trips on tensors whose answer is known, and exact merging."""

from __future__ import annotations

import math

import pytest
import torch
from planting import BLOCK, PLANT_TOKEN, planted_llama

from massact.capture.risk import BlockRisk, markdown_table, quant_risk
from massact.detect import Thresholds
from massact.fakequant import round_trip
from massact.models.structure import find_structure


def test_int8_round_trip_known_values():
    x = torch.tensor([127.0, 1.0, -0.4, -63.6])
    assert torch.equal(round_trip(x, 8), torch.tensor([127.0, 1.0, -0.0, -64.0]))
    assert torch.equal(round_trip(torch.zeros(3), 8), torch.zeros(3))
    # the scale can come from another tensor (values beyond it clamp to +-127 steps)
    assert torch.equal(round_trip(torch.tensor([0.5, 3.0]), 8, torch.tensor([1.27])), torch.tensor([0.5, 1.27]))
    assert torch.equal(round_trip(torch.tensor([7.0, 1.2]), 4), torch.tensor([7.0, 1.0]))  # 4 bits: Q = 7


def test_one_massive_value_wipes_out_the_rest():
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 12700.0]])
    risk = BlockRisk()
    risk.add(x, Thresholds(abs=100, ratio=1000))
    row = risk.row(0)
    assert row["massive_entries"] == 1
    assert (row["max_abs"], row["max_abs_without"], row["median_abs"]) == (12700.0, 1.0, 1.0)
    # with: scale = 100, every ordinary +-1 rounds to 0 -> error 100 %, all zeroed; without: exact
    assert row["int8_error_with"] == 1.0 and row["zeroed_with"] == 1.0
    assert row["int8_error_without"] == 0.0 and row["zeroed_without"] == 0.0


def test_merge_equals_one_pass():
    torch.manual_seed(0)
    parts = [torch.randn(5, 8), torch.randn(3, 8) * 4]
    parts[1][0, 3] = 5000.0
    whole, a, b = BlockRisk(), BlockRisk(), BlockRisk()
    for x in parts:
        whole.add(x, Thresholds())
    a.add(parts[0], Thresholds())
    b.add(parts[1], Thresholds())
    assert vars(a.merge(b)) == vars(whole)
    assert a.merge(b).row(0)["massive_entries"] == 1


def test_quant_risk_on_the_planted_model():
    loaded = planted_llama()
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[PLANT_TOKEN, 1, 2, PLANT_TOKEN, 3, 4, 6, 7]])
    rows = quant_risk(model, find_structure(model), [ids, ids[:, :5]])
    assert [r["block"] for r in rows] == list(range(4))
    assert rows[0]["massive_entries"] == 0
    assert rows[0]["int8_error_with"] == rows[0]["int8_error_without"]
    planted = rows[BLOCK]
    assert planted["massive_entries"] == 4 and planted["sequences"] == 2  # two planted tokens in each
    assert planted["int8_error_with"] > 10 * planted["int8_error_without"]
    assert planted["max_abs"] > 100 * planted["max_abs_without"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and not math.isnan(planted["median_abs"])


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_nonfinite_values_are_counted_not_propagated(value):
    risk = BlockRisk()
    risk.add(torch.tensor([[1.0, 2.0], [value, 3.0]]), Thresholds())
    row = risk.row(0)
    assert row["nonfinite"] == 1 and math.isfinite(row["int8_error_with"])
