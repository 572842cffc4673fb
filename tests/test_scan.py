"""`scan` finds exactly the planted massive activation, in several model families."""

from __future__ import annotations

import pytest
import torch
from planting import MARK, marked_input, plant_massive, tiny_model

from massact.models.loading import load_model
from massact.models.structure import find_structure
from massact.scan import ScanConfig, scan

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
    plant = plant_massive(model, block=1, dim=11)
    ids = marked_input(10, token=3)
    with torch.no_grad():
        reference = model(input_ids=ids, output_hidden_states=True).hidden_states
    result = scan(load_model(model, tokenizer=IdsTokenizer()), _prompt(ids))
    assert result.summary["first_block"] == plant.block
    assert result.summary["dims"] == [plant.dim]
    assert [t["token"] for t in result.summary["tokens"]] == [3]
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
    plant_massive(model, block=2, dim=7)
    result = scan(load_model(model, tokenizer=IdsTokenizer()), _prompt(marked_input(5, token=0)), ScanConfig(top_k=4))
    data = result.to_json()
    assert data["num_blocks"] == 4 and data["hidden_size"] == 32
    assert data["tokens"] == [f"<{i}>" for i in marked_input(5, token=0)[0].tolist()]
    assert data["thresholds"] == {"abs": 100.0, "ratio": 1000.0, "feature_share": 0.5}
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
    assert data["summary"]["sites"][0]["kind"] == "massive" and data["summary"]["sites"][0]["token_share"] == 1 / 5
    assert data["summary"]["features"] == []


# --- the house shape: config, run, views ----------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_run_on_ids_equals_scan_on_the_prompt(family):
    from massact.scan import run

    model = tiny_model(family)
    plant_massive(model, block=1, dim=11)
    loaded = load_model(model, tokenizer=IdsTokenizer())
    ids = marked_input(10, token=3)
    by_prompt = scan(loaded, _prompt(ids), ScanConfig(top_k=4)).to_json()
    by_ids = run(loaded, ids, ScanConfig(top_k=4)).to_json()
    assert by_prompt.pop("prompt") == _prompt(ids) and by_ids.pop("prompt") is None
    assert by_ids == by_prompt


def test_config_refuses_bad_values():
    from massact.errors import MassactError

    with pytest.raises(MassactError, match="`top_k=0`"):
        ScanConfig(top_k=0)
    with pytest.raises(MassactError, match="`keep=-1`"):
        ScanConfig(keep=-1)


def _view_texts(result, tmp_path) -> tuple[str, str]:
    from rich.console import Console

    console = Console(width=300, record=True)
    result.show(console)
    result.write(tmp_path)
    return console.export_text(), (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_block_of_nan_shows_all_nan_not_a_ranked_top(family, tmp_path):
    model = tiny_model(family)
    plant_massive(model, block=1, dim=11)
    structure = find_structure(model)
    with torch.no_grad():
        for param in structure.mlp(2).parameters():
            param.fill_(float("nan"))
    result = scan(load_model(model, tokenizer=IdsTokenizer()), _prompt(marked_input(10, token=3)), ScanConfig(top_k=4))
    data = result.to_json()
    assert [b["all_nonfinite"] for b in data["blocks"]] == [False, False, True, True]
    assert data["nonfinite_blocks"] == [2, 3]
    for block in data["blocks"][2:]:
        assert block["top"] == [] and block["top1_ratio"] is None and block["nonfinite"] == 10 * 32
    assert {m["block"] for m in data["massive"]} == {1}  # nothing is flagged in a block with no finite value
    table, report = _view_texts(result, tmp_path)
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") > 5}
    assert "all nan" in rows["2"] and "all nan" in rows["3"] and "all nan" not in rows["1"]
    assert "nan" not in rows["1"].lower()
    assert "| 2 | all nan | all nan | all nan | - | - |" in report
    assert (
        "inf/NaN in the output of blocks 2, 3" in table
        and "**Precision.** inf/NaN in the output of blocks 2, 3 (float32)" in report
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_top_k_1_report_shows_a_dash_for_top_2_and_3(family, tmp_path):
    model = tiny_model(family)
    plant_massive(model, block=1, dim=11)
    result = scan(load_model(model, tokenizer=IdsTokenizer()), _prompt(marked_input(10, token=3)), ScanConfig(top_k=1))
    _, report = _view_texts(result, tmp_path)
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    block_rows = rows[-4:]
    assert len(block_rows) == 4
    for line in block_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "-" and cells[3] == "-" and cells[1] != "-"
    assert "nan" not in report


class OddTokenizer(IdsTokenizer):
    """Decodes ids to tokens with Markdown's special characters and whitespace."""

    NAMES = {MARK: "a|b`c", 10: "\n", 11: " "}

    def decode(self, ids):
        return self.NAMES.get(ids[0], f"<{ids[0]}>")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_report_escapes_pipes_backticks_and_whitespace(family, tmp_path):
    model = tiny_model(family)
    plant_massive(model, block=1, dim=11)
    ids = marked_input(10, token=3)
    ids[0, 5], ids[0, 6] = 10, 11
    result = scan(load_model(model, tokenizer=OddTokenizer()), _prompt(ids), ScanConfig(top_k=2))
    result.prompt = "x | y `z`"
    table, report = _view_texts(result, tmp_path)
    site = next(line for line in report.splitlines() if line.startswith("| 3 |"))
    unescaped = site.replace("\\|", "")
    assert unescaped.count("|") == 9  # 8 cells: the token's own `|` does not split the row
    assert "``a\\|b`c``" in site
    prompt_line = next(line for line in report.splitlines() if line.startswith("- prompt:"))
    assert "`` x | y `z` ``" in prompt_line
    assert "a|b`c" in table
    figure_tokens = list(result.tokens)
    assert "\n" in figure_tokens and " " in figure_tokens
