"""`massact attention` and `massact atlas` block by block: the same JSON as in memory on every tiny family, with
block outputs on disk too, and a real result (the planted tokens are the massive-activation tokens C)."""

from __future__ import annotations

import json

import pytest
from cli_runner import run
from offload_models import FAMILIES, PLANT_BLOCK, PLANT_DIM, differences, saved_family
from planting import MARK

SMALL = ["--samples", "3", "--seq-len", "16"]
SPILL = "1KB"  # under one block of the tiny models: every block output goes to disk (1MB would hold them all)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: saved_family(family, root) for family in FAMILIES}


def massact(command: str, folder, offload: str, capsys, *extra: str) -> tuple[dict, str]:
    argv = [command, str(folder), *extra, "--device", "cpu", "--json", "--offload", offload]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    return json.loads(out), err


def attention(folder, offload: str, capsys, *extra: str) -> tuple[dict, str]:
    return massact("attention", folder, offload, capsys, "--corpus", str(folder / "corpus.txt"), *SMALL, *extra)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attention_block_by_block_equals_memory(folders, family, capsys):
    memory, _ = attention(folders[family], "none", capsys)
    blocks, _ = attention(folders[family], "blocks", capsys)
    assert differences(memory, blocks) == []
    assert (memory["execution"]["offload"], blocks["execution"]["offload"]) == ("none", "blocks")
    # a real result: in the first window, C is exactly the planted tokens, massive from the planted block on
    planted = [i for i, token in enumerate(blocks["tokens"]) if token.strip() == str(MARK)]
    first = blocks["sequences"][0]
    assert planted and first["massive_tokens"] == planted
    assert blocks["first_massive_block"] == PLANT_BLOCK and len(blocks["sequences"]) == 3
    # every block that runs softmax attention after the plant measured the mass on C and the replacement
    measured = [b for b in blocks["blocks"][PLANT_BLOCK + 1 :] if b["softmax_attention"]]
    assert measured and all(b["massive_mass"] > 0 and b["replace_mean_change"] is not None for b in measured)


def test_attention_with_block_outputs_on_disk(folders, capsys):
    folder = folders["gemma3"]
    memory, _ = attention(folder, "none", capsys)
    spilled, err = attention(folder, "blocks", capsys, "--max-memory", SPILL)
    assert "went to disk" in err
    assert differences(memory, spilled) == []


def test_attention_prompt_with_logits(folders, capsys):
    """One prompt (one forward pass per walk) with the pre-softmax logits and every map of block 2 kept."""
    folder = folders["llama"]
    extra = ["--text-file", str(folder / "prompt.txt"), "--logits", "--block", "2"]
    memory, _ = massact("attention", folder, "none", capsys, *extra)
    blocks, _ = massact("attention", folder, "blocks", capsys, *extra)
    assert differences(memory, blocks) == []
    assert blocks["logits_error"] is not None and blocks["logits_error"] < 1e-5


def test_atlas_block_by_block_equals_memory(folders, capsys):
    """Two families through the steps not converted elsewhere: scan, corpus constancy and attention."""
    models = [str(folders["llama"]), str(folders["gpt2"])]
    prompt = (folders["llama"] / "prompt.txt").read_text(encoding="utf-8")
    argv = ["atlas", *models, "--corpus", str(folders["llama"] / "corpus.txt"), "--prompt", prompt, *SMALL]
    argv += ["--steps", "scan,corpus,attention", "--device", "cpu", "--json"]
    results = {}
    for offload in ("none", "blocks"):
        code, out, err = run([*argv, "--offload", offload], capsys)
        assert code == 0, err
        results[offload] = json.loads(out)
    # the one field that differs by design: the real-int8 check is refused under block execution
    refused = [row["rewrites"].pop("check_quant") for row in results["blocks"]["models"]]
    assert all("not available under block execution" in why for why in refused)
    assert [row["rewrites"].pop("check_quant") for row in results["none"]["models"]] == [None, None]
    assert differences(results["none"], results["blocks"]) == []
    assert results["blocks"]["execution"]["offload"] == "blocks"
    for row in results["blocks"]["models"]:
        assert row["status"] == "ok" and row["execution"]["offload"] == "blocks"
        assert not [why for why in row["reasons"].values() if "not run" not in why]  # every step asked for ran
        assert row["massive"]["dims"] == [PLANT_DIM] and row["massive"]["first_block"] == PLANT_BLOCK
        assert row["constancy"]["sites"] and row["sink_heads"]["first_massive_block"] == PLANT_BLOCK
