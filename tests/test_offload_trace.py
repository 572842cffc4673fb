"""`massact trace` block by block: the capture, the attribution and the zero-and-restore verification.

Each tiny planted family is traced in memory and with `--offload blocks`: the JSON must be the same (1e-6
relative), the planted writer must be found (block 1, dim 4; the routed expert in the MoE families), and
zeroing its entries must remove the site, in both runs. One run sends every block output to disk (the tiny
models are smaller than 1 MB, so the budget that forces it is 1 KB).
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run
from offload_models import FAMILIES, PLANT_BLOCK, PLANT_DIM, count_spills, differences, saved_family
from planting import MARK

from massact.models.loading import load_model
from massact.models.offload import materialized
from massact.trace import zeroed_entries

MOE = ("mixtral", "gpt_oss", "qwen3_next")
PLANTED_EXPERT = 2  # planting.plant_expert's default


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("offload-trace")
    return {family: saved_family(family, root) for family in FAMILIES}


def trace(folder, offload: str, capsys, *extra: str) -> dict:
    argv = [
        "trace", str(folder), "--text-file", str(folder / "prompt.txt"), "--corpus", str(folder / "corpus.txt"),
        "--samples", "4", "--seq-len", "16", "--batch-size", "2", "--device", "cpu", "--json", "--offload", offload,
        *extra,
    ]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["execution"]["offload"] == offload
    return data


def check_planted(family: str, data: dict) -> None:
    """Every dim-4 site is written in block 1 by the planted writer, and zeroing its entries removes it."""
    sites = [s for s in data["sites"] if s["dim"] == PLANT_DIM]
    assert any(data["tokens"][s["token"]] == str(MARK) for s in sites)
    for site in sites:
        assert site["block"] == PLANT_BLOCK and site["entries_needed"]["of_jump"] == 1
        if family in MOE:
            assert (site["writer"], site["expert"]) == ("expert", PLANTED_EXPERT)
            assert site["entries"][0]["stored_index"][0] == PLANTED_EXPERT
        elif family == "gemma3":  # the sandwich norm's gain is the super weight
            assert site["module"] == f"model.layers.{PLANT_BLOCK}.post_feedforward_layernorm"
        else:
            assert site["writer"] == "mlp"
    check = data["verification"]
    states = check["states"]
    assert check["restored_exact"]
    rows = (states[k]["sites"] for k in ("original", "zeroed", "restored"))
    for original, zeroed, restored in zip(*rows, strict=True):
        if original["dim"] == PLANT_DIM:
            assert original["massive"] and not zeroed["massive"]
            assert abs(zeroed["value_at_peak_block"]) < 1e-3 * abs(original["value_at_peak_block"])
        assert restored == original
    assert states["restored"]["perplexity"] == states["original"]["perplexity"]
    assert len(data["quant_risk"]) == 4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trace_blocks_equals_memory(family, folders, capsys):
    memory = trace(folders[family], "none", capsys)
    blocks = trace(folders[family], "blocks", capsys)
    assert differences(memory, blocks) == []
    check_planted(family, blocks)


def test_spilled_block_outputs_give_the_same_trace(folders, capsys, monkeypatch):
    spills = count_spills(monkeypatch)
    memory = trace(folders["mixtral"], "none", capsys)
    spilled = trace(folders["mixtral"], "blocks", capsys, "--max-memory", "1KB")
    assert spills and max(spills) > 0  # the block outputs went to disk
    assert differences(memory, spilled) == []
    check_planted("mixtral", spilled)


def test_risk_table_without_verification(folders, capsys):
    memory = trace(folders["qwen2"], "none", capsys, "--no-verify")
    blocks = trace(folders["qwen2"], "blocks", capsys, "--no-verify")
    assert blocks["verification"] is None and len(blocks["quant_risk"]) == 4
    assert differences(memory, blocks) == []


def test_zeroed_entries_edit_the_read_tensor_and_leave_the_checkpoint(folders):
    loaded = load_model(str(folders["mixtral"]), device="cpu", offload="blocks")
    model = loaded.model
    name = f"model.layers.{PLANT_BLOCK}.mlp.experts.down_proj"
    index = (PLANTED_EXPERT, PLANT_DIM, 5)
    experts = model.get_submodule(name.rpartition(".")[0])
    with materialized(model, [experts]):
        original = experts.down_proj.detach().clone()
    assert experts.down_proj.is_meta and original[index] != 0
    with zeroed_entries(model, [(name, index)]):
        assert experts.down_proj.is_meta  # nothing written into the model: the edit waits for the read
        with materialized(model, [experts]):
            edited = experts.down_proj.detach().clone()
    expected = original.clone()
    expected[index] = 0
    assert torch.equal(edited, expected)
    with materialized(model, [experts]):
        assert torch.equal(experts.down_proj, original)
