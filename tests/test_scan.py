"""`scan` finds exactly the planted massive activation, in several model families."""

from __future__ import annotations

import pytest
import torch
from planting import MARK, marked_input, plant_massive, tiny_model

from massact.models.loading import load_model
from massact.scan import scan

FAMILIES = ["llama", "gpt2", "opt", "gemma", "qwen2"]


class IdsTokenizer:
    """A stand-in tokenizer for tiny models: the prompt is a space-separated list of ids."""

    all_special_ids: list[int] = []

    def __call__(self, text, return_tensors="pt", add_special_tokens=True):
        return {"input_ids": torch.tensor([[int(t) for t in text.split()]])}

    def decode(self, ids):
        return f"<{ids[0]}>"


def _prompt(ids: torch.Tensor) -> str:
    return " ".join(str(i) for i in ids[0].tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_scan_finds_exactly_the_planted_activation(family):
    model = tiny_model(family)
    plant = plant_massive(model, block=1, token=3, dim=11)
    ids = marked_input(10, token=3)
    with torch.no_grad():
        reference = model(input_ids=ids, output_hidden_states=True).hidden_states
    result = scan(load_model(model, tokenizer=IdsTokenizer()), _prompt(ids))
    assert result.summary["first_block"] == plant.block
    assert result.summary["dims"] == [plant.dim]
    assert [t["token"] for t in result.summary["tokens"]] == [plant.token]
    assert result.summary["tokens"][0]["token_text"] == f"<{MARK}>"
    assert {(m.block, m.token, m.dim) for m in result.massive} == {(b, 3, 11) for b in range(1, 4)}
    for m in result.massive:
        if m.block < result.num_blocks - 1:  # transformers applies the final norm to its last hidden state
            # the value is the block output that transformers itself reports for that block
            assert m.value == reference[m.block + 1][0, m.token, m.dim].item()
        assert m.ratio == abs(m.value) / result.records[m.block].median
    assert result.records[0].massive_values.numel() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_unplanted_twin_has_none(family):
    model = tiny_model(family)
    result = scan(load_model(model, tokenizer=IdsTokenizer()), _prompt(marked_input(10, token=3)))
    assert result.massive == []
    assert result.summary["first_block"] is None and result.summary["dims"] == []


def test_json_contract():
    model = tiny_model("llama")
    plant_massive(model, block=2, token=0, dim=7)
    result = scan(load_model(model, tokenizer=IdsTokenizer()), _prompt(marked_input(5, token=0)), top_k=4)
    data = result.to_json()
    assert data["num_blocks"] == 4 and data["hidden_size"] == 32
    assert data["tokens"] == [f"<{i}>" for i in marked_input(5, token=0)[0].tolist()]
    assert data["thresholds"] == {"abs": 100.0, "ratio": 1000.0}
    assert [b["index"] for b in data["blocks"]] == [0, 1, 2, 3]
    for block in data["blocks"]:
        mags = [t["magnitude"] for t in block["top"]]
        assert len(mags) == 4 and mags == sorted(mags, reverse=True)
        assert all(abs(t["value"]) == t["magnitude"] for t in block["top"])
    assert data["blocks"][2]["top"][0]["token"] == 0 and data["blocks"][2]["top"][0]["dim"] == 7
    assert {(m["block"], m["token"], m["dim"]) for m in data["massive"]} == {(2, 0, 7), (3, 0, 7)}
    assert set(data["massive"][0]) >= {"block", "token", "token_text", "dim", "value", "ratio"}
    assert data["summary"]["first_block"] == 2 and data["summary"]["last_block"] == 3
    assert data["summary"]["tokens"][0]["token_kind"] == "first"
