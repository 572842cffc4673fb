"""Trace on tiny models with a planted super weight: the exact (block, row, column) is known."""

from __future__ import annotations

import pytest
import torch
from planting import BLOCK, CHANNEL, DIM, PLANT_TOKEN, PROMPT, number_tokenizer, planted_gpt2, planted_llama
from transformers import LlamaConfig, LlamaForCausalLM

from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.trace import TraceConfig, TraceInputs, run, zeroed_entries
from massact.trace.linear import find_writer_linear
from massact.trace.verify import control_entries, measure_sites, reported_entries, verify_trace


def number_text(length: int = 400, seed: int = 0, low: int = 1, high: int = 14) -> list[str]:
    """A corpus of random numbers in [low, high), without the planted token id."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (length,), generator=generator)
    ids[ids == PLANT_TOKEN] = low
    return [" ".join(str(int(i)) for i in ids)]


QUICK = TraceConfig(add_special_tokens=False, verify=False, risk=False)


def trace(loaded: LoadedModel, prompt: str, **options) -> object:
    """`run` without verification or risk table unless asked; windows from `number_text()`."""
    texts = options.pop("texts", None) or number_text()
    return run(loaded, TraceInputs(prompt, texts), TraceConfig(**{**QUICK.__dict__, **options}))


@pytest.fixture(scope="module")
def llama() -> LoadedModel:
    return planted_llama()


def test_writer_linear_is_the_down_projection(llama):
    structure = find_structure(llama.model)
    writer = find_writer_linear(structure.mlp(2), structure.mlp_path(2), 32)
    assert writer.name == "model.layers.2.mlp.down_proj"
    assert writer.module is llama.model.model.layers[2].mlp.down_proj
    attn = find_writer_linear(structure.attn(0), structure.attn_path(0), 32)
    assert attn.name == "model.layers.0.self_attn.o_proj"


def test_trace_finds_the_planted_super_weight(llama):
    result = trace(llama, PROMPT)
    assert {(s.token, s.dim) for s in result.sites} == {(0, DIM), (3, DIM)}
    for site in result.sites:
        assert site.block == BLOCK
        assert site.writer == "mlp"
        assert site.module == f"model.layers.{BLOCK}.mlp.down_proj"
        top = site.entries[0]
        assert (top.block, top.row, top.column) == (BLOCK, DIM, CHANNEL)
        assert top.stored_index == [DIM, CHANNEL]
        assert top.weight == 40.0
        assert top.weight_rank == 1
        assert site.entries_needed["of_jump"] == 1
        assert top.share_of_jump > 0.9
        assert site.channels[0]["channel"] == CHANNEL
        # the block's update is the sum of the sub-layer updates (LLaMA adds both outputs as they are)
        assert abs(site.other_update) < 1e-3 * abs(site.jump)
        assert site.mlp_update == pytest.approx(site.module_output, rel=1e-5)
        assert top.contribution == pytest.approx(top.weight * top.input, rel=1e-5)


def test_trace_json_entries_have_the_required_fields(llama):
    data = trace(llama, PROMPT).to_json()
    entry = data["entries"][0]
    assert {"block", "module", "row", "column", "weight", "contribution"} <= set(entry)
    assert (entry["block"], entry["row"], entry["column"]) == (BLOCK, DIM, CHANNEL)


def test_trace_through_conv1d_reports_w_down_convention():
    gpt2 = planted_gpt2()
    result = trace(gpt2, PROMPT)
    assert result.sites, "the planted activation was not found"
    site = result.sites[0]
    top = site.entries[0]
    assert site.module == f"transformer.h.{BLOCK}.mlp.c_proj"
    assert (top.block, top.row, top.column) == (BLOCK, DIM, CHANNEL)
    assert top.stored_index == [CHANNEL, DIM]
    assert top.weight == 400.0


def test_zeroing_the_reported_entry_removes_the_activation_and_restores_exactly(llama):
    result = trace(llama, PROMPT)
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    structure, ids = find_structure(llama.model), torch.tensor([result.input_ids])
    original = measure_sites(llama, structure, ids, result.sites, result.thresholds)
    assert all(s["massive"] for s in original["sites"])
    with zeroed_entries(llama.model, reported_entries(result.sites)):
        assert float(llama.model.model.layers[BLOCK].mlp.down_proj.weight[DIM, CHANNEL]) == 0.0
        zeroed = measure_sites(llama, structure, ids, result.sites, result.thresholds)
    assert zeroed["num_massive"] == 0
    for s in zeroed["sites"]:
        assert not s["massive"] and s["max_abs"] < 5.0
    after = llama.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert measure_sites(llama, structure, ids, result.sites, result.thresholds) == original


def test_zeroed_entries_restores_bit_for_bit_on_error_and_duplicates(llama):
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    name = f"model.layers.{BLOCK}.mlp.down_proj.weight"
    with pytest.raises(RuntimeError), zeroed_entries(llama.model, [(name, (DIM, CHANNEL)), (name, [DIM, CHANNEL])]):
        raise RuntimeError("boom")
    after = llama.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(MassactError), zeroed_entries(llama.model, [("no.such.weight", (0, 0))]):
        pass
    with pytest.raises(MassactError), zeroed_entries(llama.model, [(name, (DIM, 9999))]):
        pass


def test_control_entries_are_distinct_and_seeded(llama):
    chosen = reported_entries(trace(llama, PROMPT).sites)
    a = control_entries(llama.model, chosen, seed=3)
    assert a == control_entries(llama.model, chosen, seed=3)
    assert len(a) == len(chosen) and not set(a) & set(chosen)
    assert {name for name, _ in a} == {name for name, _ in chosen}


def test_verify_trace_states(llama):
    planted_text = [" ".join([PROMPT] * 20)]
    result = trace(llama, PROMPT, verify=True, samples=3, seq_len=16, corpus="numbers", texts=planted_text)
    report = result.verification
    states = report["states"]
    assert report["windows"] == [3, 16] and states["original"]["tokens"] == 3 * 15
    assert report["restored_exact"]
    assert all(s["massive"] for s in states["original"]["sites"])
    assert not any(s["massive"] for s in states["zeroed"]["sites"])
    assert all(s["massive"] for s in states["control"]["sites"])
    assert states["restored"] == states["original"]
    assert states["zeroed"]["perplexity"] != states["original"]["perplexity"]


def test_no_massive_activation_gives_an_empty_trace():
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    plain = LoadedModel(model=LlamaForCausalLM(config).eval(), tokenizer=number_tokenizer(), name="plain")
    result = trace(plain, PROMPT)
    assert result.sites == [] and result.to_json()["entries"] == []
    ids = torch.tensor([result.input_ids])
    assert verify_trace(plain, find_structure(plain.model), ids, [], result.thresholds)["states"] == {}


def test_bad_site_options(llama):
    with pytest.raises(MassactError, match="`token=99` is out of range"):
        trace(llama, PROMPT, token=99)
    with pytest.raises(MassactError, match="`dim=999` is out of range"):
        trace(llama, PROMPT, dim=999)
    with pytest.raises(MassactError, match="`block=99` is out of range"):
        trace(llama, PROMPT, block=99)
