"""The bundled SmolLM2-135M-Instruct: massact's own detection recovers the published facts.

Reference values: the project's science notes (section 7), measured with a plain forward hook
on each decoder block for the prompt below, tokenized without special tokens.
"""

from __future__ import annotations

import pytest

from massact.scan import ScanConfig, scan

PROMPT = "Summer is warm. Winter is cold.\n"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(smollm2):
    return scan(smollm2, PROMPT, ScanConfig(add_special_tokens=False))


def _top(result, block, rank=1):
    record = result.records[block]
    return float(record.top_values[rank - 1]), int(record.top_tokens[rank - 1]), int(record.top_dims[rank - 1])


def _value_at(result, block, token, dim):
    record = result.records[block]
    for value, t, d in zip(record.top_values.tolist(), record.top_tokens.tolist(), record.top_dims.tolist()):
        if (t, d) == (token, dim):
            return value
    raise AssertionError(f"({token}, {dim}) not among the top activations of block {block}")


def test_shape_of_the_model(result):
    assert result.num_blocks == 30 and result.hidden_size == 576
    assert len(result.tokens) == 9 and result.tokens[0] == "Summer"


def test_detection_finds_dim_507_on_the_first_token_from_block_11(result):
    summary = result.summary
    assert summary["first_block"] == 11
    assert summary["dims"] == [507]
    assert [t["token"] for t in summary["tokens"]] == [0]
    assert summary["tokens"][0]["token_kind"] == "first"
    assert all(m.dim == 507 and m.token == 0 for m in result.massive)
    assert summary["last_block"] == 27  # blocks 28 and 29 drop below 1000 x median


@pytest.mark.parametrize(
    "block,expected",
    [(1, 206), (2, 713), (8, 570), (11, 23_150), (27, 22_760), (28, 8_440), (29, 2_920)],
)
def test_dim_507_on_token_0_matches_the_published_values(result, block, expected):
    value, token, dim = _top(result, block)
    assert (token, dim) == (0, 507)
    assert value == pytest.approx(expected, rel=0.01)


def test_block_11_companions_and_median(result):
    assert _value_at(result, 11, 0, 247) == pytest.approx(1_690, rel=0.01)
    assert _value_at(result, 11, 0, 14) == pytest.approx(850, rel=0.01)
    median = result.records[11].median
    assert median == pytest.approx(1.7, rel=0.03)  # published as "about 1.7"
    assert _top(result, 11)[0] / median > 10_000
    assert result.records[2].median == pytest.approx(0.9, rel=0.01)


def test_the_value_stays_nearly_constant_through_the_middle_blocks(result):
    values = [_top(result, b)[0] for b in range(11, 28)]
    assert max(values) / min(values) < 1.02
