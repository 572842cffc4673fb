"""Trace through the norm after a sub-layer (Gemma-3 sandwich norms): its gain entry is the super weight.

The plant: Gemma-3's block 1 MLP writes a modest spike into dim 4 of the BOS, and its post-MLP norm's
gain `1 + w[4]` turns it into 1e5. The known answer is that norm's weight entry [4].
"""

from __future__ import annotations

import math

import pytest
import torch
from planting import letter_word, plant_sandwich, tiny_gemma3, tiny_model, word_tokenizer

from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.quant import super_weights_from_trace
from massact.trace import TraceConfig, run
from massact.trace.capture import TraceCapture
from massact.trace.verify import verify_trace
from massact.trace.writer import trace_site

BLOCK, DIM, VALUE = 1, 4, 1e5
NORM = f"model.layers.{BLOCK}.post_feedforward_layernorm"


word = letter_word


PROMPT = " ".join(word(i) for i in (12, 30, 40, 11, 50, 33))
QUICK = TraceConfig(verify=False, risk=False, progress=False)


@pytest.fixture(scope="module")
def gemma3() -> LoadedModel:
    model = tiny_gemma3()
    plant_sandwich(model, block=BLOCK, dim=DIM, value=VALUE)
    return LoadedModel(model=model, tokenizer=word_tokenizer(word, bos=True), name="planted-gemma3")


def test_sandwich_norm_gain_is_the_traced_super_weight(gemma3):
    result = run(gemma3, PROMPT, QUICK)
    site = next(s for s in result.sites if (s.token, s.dim) == (0, DIM))
    assert site.block == BLOCK and site.writer == "mlp"
    assert site.module == NORM and site.post_norm == NORM
    top = site.entries[0]
    assert top.parameter == f"{NORM}.weight" and top.stored_index == [DIM]
    planted = float(gemma3.model.model.layers[BLOCK].post_feedforward_layernorm.weight.detach()[DIM])
    assert top.weight == planted == pytest.approx(VALUE / math.sqrt(32) - 1.0)
    assert top.share_of_jump == pytest.approx(1.0, abs=1e-3) and site.entries_needed["of_jump"] == 1
    assert site.mlp_update == pytest.approx(site.jump, rel=1e-3)  # the norm's output is the update
    assert abs(site.other_update) < 1e-3 * abs(site.jump)
    assert abs(site.pre_norm_update) < 0.1 * abs(site.jump)  # before the norm the MLP writes far less
    assert NORM in site.note and "writes the jump" in site.note
    supers = super_weights_from_trace(result.entries(), 4)
    assert [(w.parameter, w.index) for w in supers] == [(f"{NORM}.weight", (DIM,))]


def test_zeroing_the_norm_gain_removes_the_site_and_restores_it(gemma3):
    result = run(gemma3, PROMPT, QUICK)
    structure = find_structure(gemma3.model)
    ids = gemma3.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    before = gemma3.model.model.layers[BLOCK].post_feedforward_layernorm.weight.clone()
    check = verify_trace(gemma3, structure, ids, result.sites, QUICK.thresholds, progress=False)
    states = check["states"]
    value = states["original"]["sites"][0]["value_at_peak_block"]
    assert value == pytest.approx(VALUE, rel=1e-3)
    assert (
        abs(states["zeroed"]["sites"][0]["value_at_peak_block"]) < 100 and not states["zeroed"]["sites"][0]["massive"]
    )
    assert states["restored"]["sites"][0]["value_at_peak_block"] == value
    assert torch.equal(before, gemma3.model.model.layers[BLOCK].post_feedforward_layernorm.weight)


def test_a_jump_no_sub_layer_writes_names_no_writer():
    """A capture whose sub-layers add 0.5 of a 100 jump: no module is named, and the note says so."""
    model = tiny_model("llama")
    structure = find_structure(model)
    zero = torch.zeros(1, 32)
    capture = TraceCapture(tokens=[0])
    for block in range(len(structure)):
        capture.block_in[block] = zero.clone()
        capture.block_out[block] = zero.clone()
        for name in ("attention", "mlp"):
            capture.update[(block, name)] = zero.clone()
    capture.block_out[2][0, DIM] = 100.0
    capture.update[(2, "mlp")][0, DIM] = 0.5
    site = trace_site(capture, structure, 32, 0, DIM)
    assert site.block == 2 and site.jump == 100.0
    assert site.writer is None and site.module is None and site.entries == []
    assert "no sub-layer writes this jump" in site.note
