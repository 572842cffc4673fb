"""`massact export` and `massact quant` block by block: the same JSON as in memory, the planted site found.

Each tiny planted family is exported (sites, act scales, outlier tokens, recipe) and quantized (calibration,
weight / activation / KV schemes with smoothing and rotation, the per-block sensitivity) in memory and with
`--offload blocks`: the JSON must be the same (1e-6 relative), perplexities included. `best` (with the super
weights the trace finds) and static scales run on one family, one run sends every block output to disk, and
the weights come back bit for bit after a quantization run either way.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run
from offload_models import FAMILIES, PLANT_BLOCK, PLANT_DIM, count_spills, differences, saved_family
from planting import MARK

import massact.capture.blockwise as blockwise
from massact.models.loading import load_model
from massact.models.offload import materialized
from massact.quant import QuantConfig, SuperWeight, load_inputs
from massact.quant import run as quant_run

ROTATED = ("llama", "qwen2", "mixtral", "gpt_oss")  # what `massact rewrite --rotate` takes exactly (gemma3, gpt2
# and qwen3_next: sandwich norms, LayerNorm, a gated norm)
WINDOWS = ("--samples", "4", "--seq-len", "16", "--batch-size", "2", "--device", "cpu", "--json")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("offload-quant")
    return {family: saved_family(family, root) for family in FAMILIES}


@pytest.fixture
def passes(monkeypatch) -> list[int]:
    """The number of batches of every block-by-block pass (one read of the model each)."""
    seen: list[int] = []
    original = blockwise.run_blockwise

    def counted(offload, batches, *args, **kwargs):
        seen.append(len(batches))
        return original(offload, batches, *args, **kwargs)

    monkeypatch.setattr(blockwise, "run_blockwise", counted)
    return seen


def massact(command: str, folder, offload: str, capsys, *extra: str) -> dict:
    argv = [command, str(folder), "--corpus", str(folder / "corpus.txt"), *WINDOWS, "--offload", offload, *extra]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["execution"]["offload"] == offload
    return data


def quant(folder, offload: str, capsys, *extra: str) -> dict:
    return massact("quant", folder, offload, capsys, "--calib-samples", "2", "--sensitivity-samples", "1", *extra)


def check_export(data: dict) -> None:
    """The planted site (block 1, dim 4) leads the sites, its token leads the outlier tokens, the recipe keeps
    the head and the act scales cover the Linears."""
    sites = data["sites"]
    assert sites["dims"] == [PLANT_DIM] and sites["blocks"][0] == PLANT_BLOCK
    assert all(str(MARK) in [t["token"] for t in s["tokens"]] for s in sites["sites"])
    assert data["outlier_tokens"]["tokens"][0]["token"] == str(MARK)
    assert "lm_head" in data["recipe"]["quant_stage"]["quant_modifiers"]["GPTQModifier"]["ignore"]
    assert data["act_scales"] and all(v >= 0 for v in data["act_scales"].values())


def check_quant(data: dict) -> None:
    """Calibration finds the planted blocks and token; every perplexity is finite; every block has a sensitivity."""
    assert data["massive_blocks"][0] == PLANT_BLOCK
    assert MARK in data["outlier_tokens"]["token_ids"] or data["outlier_tokens"]["first_positions"] == 1
    perplexities = [data["baseline"]["perplexity"], *(r["perplexity"] for r in data["rows"])]
    assert all(0 < p < float("inf") for p in perplexities)
    assert [r["block"] for r in data["sensitivity"]["blocks"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_blocks_equals_memory(family, folders, capsys, passes):
    memory = massact("export", folders[family], "none", capsys)
    assert passes == []
    blocks = massact("export", folders[family], "blocks", capsys)
    assert passes == [2, 1]  # one read for all windows (2 batches), one for the recipe's norm -> Linear mappings
    assert differences(memory, blocks) == []
    check_export(blocks)


def test_act_scales_and_imatrix_files_are_identical(folders, capsys, tmp_path):
    files = {}
    for offload in ("none", "blocks"):
        out = tmp_path / offload
        folder = folders["llama"]
        argv = ["export", str(folder), "--corpus", str(folder / "corpus.txt"), *WINDOWS[:-1], "--offload", offload]
        code, _, err = run([*argv, "--format", "act-scales,imatrix", "--out", str(out)], capsys)
        assert code == 0, err
        files[offload] = (torch.load(out / "act_scales.pt", weights_only=True), (out / "imatrix.gguf").read_bytes())
    (scales, imatrix), (block_scales, block_imatrix) = files["none"], files["blocks"]
    assert scales.keys() == block_scales.keys() and all(torch.equal(scales[k], block_scales[k]) for k in scales)
    assert imatrix == block_imatrix


@pytest.mark.parametrize("family", list(FAMILIES))
def test_quant_blocks_equals_memory(family, folders, capsys):
    rotate = ",rotate" if family in ROTATED else ""  # refused elsewhere (tests/test_quant_rotate.py)
    extra = ("--schemes", "W8A8,W4A4-KV4", "--strategies", f"none,outlier-tokens+smooth{rotate}")
    memory = quant(folders[family], "none", capsys, *extra)
    blocks = quant(folders[family], "blocks", capsys, *extra)
    assert differences(memory, blocks) == []
    check_quant(blocks)


def test_best_static_scales_and_super_weights_block_by_block(folders, capsys):
    extra = ("--schemes", "W4A8-static", "--strategies", "keep-super-weights,best", "--best-samples", "1")
    memory = quant(folders["llama"], "none", capsys, *extra)
    blocks = quant(folders["llama"], "blocks", capsys, *extra)
    assert differences(memory, blocks) == []
    check_quant(blocks)
    assert [w["block"] for w in blocks["super_weights"]] == [PLANT_BLOCK]
    assert blocks["best"]["W4A8-static"]["chosen"] in blocks["best"]["W4A8-static"]["calibration_perplexity"]


def test_spilled_block_outputs_give_the_same_quantization(folders, capsys, monkeypatch):
    spills = count_spills(monkeypatch)
    extra = ("--schemes", "W8A8", "--strategies", "outlier-tokens+smooth")
    memory = quant(folders["gemma3"], "none", capsys, *extra)
    spilled = quant(folders["gemma3"], "blocks", capsys, *extra, "--max-memory", "1KB")  # the models are < 1 MB
    assert spills and max(spills) > 0  # the block outputs went to disk
    assert differences(memory, spilled) == []
    check_quant(spilled)


def test_weights_come_back_bit_for_bit(folders):
    """Every transform and rounding is undone after the run: in memory the tensors are the originals again;
    block by block nothing was written into the model and no edit stays registered."""
    folder = folders["qwen2"]
    config = QuantConfig(
        schemes=("W4A8-static", "W4g16-KV4"),
        strategies=("outlier-tokens+smooth+keep-super-weights", "rotate"),
        sensitivity="W4A4",
        sensitivity_samples=1,
        batch_size=2,
        progress=False,
    )
    module = f"model.layers.{PLANT_BLOCK}.mlp.down_proj"
    planted = SuperWeight(module, f"{module}.weight", (PLANT_DIM, 5), 400.0, PLANT_BLOCK)  # planting.plant_massive
    results = {}
    for offload in ("none", "blocks"):
        loaded = load_model(str(folder), device="cpu", offload=offload)
        model = loaded.model
        before = {k: v.clone() for k, v in model.state_dict().items()} if offload == "none" else None
        inputs = load_inputs(loaded, str(folder / "corpus.txt"), 2, 16, 2)
        inputs.super_weights = [planted]
        results[offload] = quant_run(loaded, inputs, config).to_json()
        if before is not None:
            after = model.state_dict()
            assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
            continue
        assert loaded.offload.edits == {}
        assert all(p.is_meta for p in model.parameters())
        reference = load_model(str(folder), device="cpu", offload="none").model.state_dict()
        with materialized(model, [model]):
            weights = model.state_dict()
            assert all(torch.equal(weights[k], reference[k]) for k in reference)
    assert differences(results["none"], results["blocks"]) == []
    assert [w["index"] for w in results["blocks"]["super_weights"]] == [[PLANT_DIM, 5]]
