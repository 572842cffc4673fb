"""Streaming block statistics: exact numbers, padding excluded, inf/NaN reported, hooks always removed."""

from __future__ import annotations

import pytest
import torch
from planting import MARK, marked_input, plant_massive, tiny_model
from planting import assert_same_records as _same_records

from massact.capture.stats import capture_block_stats, median_magnitude, summarize_hidden
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.structure import find_structure


def test_summary_of_a_known_tensor():
    torch.manual_seed(0)
    hidden = torch.randn(7, 20)
    hidden[2, 5] = -500.0
    hidden[4, 9] = 300.0
    record = summarize_hidden(hidden, top_k=3, thresholds=Thresholds(abs=100, ratio=100))
    mags = hidden.abs()
    assert record.median == torch.median(mags).item()
    assert record.top_values[:2].tolist() == [-500.0, 300.0]
    assert record.top_tokens[:2].tolist() == [2, 4] and record.top_dims[:2].tolist() == [5, 9]
    assert torch.equal(record.dim_max, mags.amax(0)) and torch.equal(record.token_max, mags.amax(1))
    assert sorted(zip(record.massive_tokens.tolist(), record.massive_dims.tolist())) == [(2, 5), (4, 9)]


@pytest.mark.parametrize("n", [1, 2, 5, 1000, 1001])
def test_median_is_the_lower_median(n):
    values = torch.rand(n)
    assert median_magnitude(values) == torch.median(values).item()


def test_both_thresholds_apply():
    hidden = torch.full((4, 10), 0.5)
    hidden[0, 0] = 400.0  # ratio 800 < 1000: not massive
    hidden[1, 1] = 80.0  # ratio 160 and below abs 100
    assert summarize_hidden(hidden).massive_values.numel() == 0
    hit = summarize_hidden(hidden, thresholds=Thresholds(abs=50, ratio=100))
    assert sorted(hit.massive_values.tolist()) == [80.0, 400.0]


def test_thresholds_must_be_positive():
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(MassactError):
            Thresholds(abs=bad)
        with pytest.raises(MassactError):
            Thresholds(ratio=bad)


def test_padding_never_enters_the_statistics():
    model = tiny_model("llama")
    plant_massive(model, block=1, dim=11)
    structure = find_structure(model)
    alone = marked_input(6, token=2, seed=3)
    other = torch.full((1, 9), 20)
    other[0, 6:] = MARK  # pad positions hold the marked token: a leak would show a massive activation
    batch = torch.cat([torch.cat([alone, torch.full((1, 3), MARK)], 1), other])
    mask = torch.ones_like(batch)
    mask[0, 6:] = 0
    mask[1, 6:] = 0
    with capture_block_stats(model, structure) as collector:
        model(input_ids=batch, attention_mask=mask)
        first, second = collector.pop()
        model(input_ids=alone)
        (single,) = collector.pop()
    assert first.positions.tolist() == list(range(6)) and second.positions.tolist() == list(range(6))
    assert all(b.massive_values.numel() == 0 for b in second.blocks)
    for batched, reference in zip(first.blocks, single.blocks):
        assert batched.massive_tokens.tolist() == reference.massive_tokens.tolist()
        torch.testing.assert_close(batched.top_values, reference.top_values, rtol=1e-4, atol=1e-5)
        assert batched.median == pytest.approx(reference.median, rel=1e-4)


def test_fp16_overflow_is_reported_not_ranked():
    model = tiny_model("llama")
    plant_massive(model, block=1, dim=11, gain=4000.0)  # far beyond 65,504 in fp16
    model = model.half()
    structure = find_structure(model)
    with capture_block_stats(model, structure) as collector:
        model(input_ids=marked_input(8, token=3))
        (record,) = collector.pop()
    assert record.blocks[0].nonfinite == 0
    overflow = record.blocks[1]
    assert overflow.nonfinite >= 1
    assert (3, 11) in [(t, d) for t, d, _ in overflow.nonfinite_sites]
    assert torch.isfinite(overflow.top_values).all()
    assert overflow.median == overflow.median  # a number, not NaN


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_model_is_bit_identical_after_capture_and_after_an_error():
    model = tiny_model("gpt2")
    plant_massive(model, block=2, dim=4)
    ids = marked_input(7, token=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(input_ids=ids).logits
    structure = find_structure(model)
    with torch.no_grad(), capture_block_stats(model, structure) as collector:
        during = model(input_ids=ids).logits
        collector.pop()
    assert torch.equal(before, during)

    def explode(module, args, output):
        raise RuntimeError("boom")

    handle = structure.blocks[3].register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), capture_block_stats(model, structure):
        model(input_ids=ids)
    handle.remove()
    assert _hook_count(model) == 0
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_block_with_no_finite_value_is_marked_and_selects_nothing():
    from massact.capture.stats import summarize_hidden

    nan = summarize_hidden(torch.full((4, 6), float("nan")), top_k=3)
    assert nan.all_nonfinite and nan.nonfinite == 24 and nan.nonfinite_kind == "nan"
    assert nan.median != nan.median and nan.massive_values.numel() == 0
    mixed = torch.full((4, 6), float("inf"))
    mixed[0, 0] = float("nan")
    both = summarize_hidden(mixed, top_k=3)
    assert both.all_nonfinite and both.nonfinite_kind == "inf/nan"
    partly = torch.ones(4, 6)
    partly[1, 2] = float("inf")
    some = summarize_hidden(partly, top_k=3)
    assert not some.all_nonfinite and some.nonfinite == 1 and some.nonfinite_kind == "inf"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_collector_sees_the_forward_inputs_and_leaves_no_hook(family):
    model = tiny_model(family)
    structure = find_structure(model)
    ids = marked_input(5, token=0)
    with capture_block_stats(model, structure) as collector:
        assert _hook_count(model) == len(structure) + 1  # one per block, one kwargs pre-hook on the model
        with torch.no_grad():
            model(input_ids=ids)
        assert torch.equal(collector.input_ids, ids)
        collector.pop()
    assert _hook_count(model) == 0 and collector.input_ids is None


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(
    ("top_k", "thresholds"), [(16, Thresholds()), (1, Thresholds()), (4, Thresholds(abs=1e-6, ratio=1e-6))]
)
def test_deferred_summaries_equal_the_direct_ones(family, top_k, thresholds, monkeypatch):
    """The accelerator path (device tensors only in the hooks, read back in pop) gives the same records.

    Forced on the CPU here: padding, a planted massive activation, a NaN block output, `--top-k 1`, and
    thresholds so low that the listed entries are truncated.
    """
    monkeypatch.setattr("massact.capture.stats.MAX_MASSIVE_PER_BLOCK", 100)  # so that the low thresholds truncate
    model = tiny_model(family)
    plant_massive(model, block=1, dim=5)
    structure = find_structure(model)
    ids = torch.cat([marked_input(120, 3, seed=1), marked_input(120, 0, seed=2)])
    mask = torch.ones_like(ids)
    mask[1, 110:] = 0  # right padding on the second sequence
    nan_block = structure.blocks[2]
    handle = nan_block.register_forward_hook(lambda m, a, out: _with_nan(out))
    try:
        results = []
        for deferred in (True, False):
            with capture_block_stats(
                model, structure, top_k=top_k, thresholds=thresholds, keep=(1,), deferred=deferred
            ) as c:
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask)
                results.append(c.pop())
    finally:
        handle.remove()
    deferred, direct = results
    _same_records(deferred, direct)
    assert direct[0].blocks[2].nonfinite > 0 and direct[1].blocks[1].positions.numel() == 110
    assert any(b.massive_truncated for b in direct[0].blocks) == (thresholds.abs < 1)
    assert direct[0].blocks[1].massive_dims.tolist().count(5) >= 1


def _with_nan(output):
    hidden = output[0] if isinstance(output, tuple) else output
    hidden = hidden.clone()
    hidden[:, 4, 7] = float("nan")
    hidden[:, 9, 1] = float("inf")
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
