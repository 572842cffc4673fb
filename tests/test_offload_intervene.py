"""`massact intervene` block by block: the same JSON as in memory (survey, means, zero / mean / random control and
their perplexities) on every tiny family, with block outputs on disk too."""

from __future__ import annotations

import json

import pytest
from cli_runner import run
from offload_models import FAMILIES, PLANT_BLOCK, PLANT_DIM, differences, saved_family

from massact.capture import blockwise

SMALL = ["--samples", "4", "--seq-len", "16", "--means-samples", "4", "--batch-size", "2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: saved_family(family, root) for family in FAMILIES}


def intervene(folder, offload: str, capsys, *extra: str) -> dict:
    corpus = str(folder / "corpus.txt")
    argv = ["intervene", str(folder), "--corpus", corpus, *SMALL, *extra, "--device", "cpu", "--json"]
    code, out, err = run([*argv, "--offload", offload], capsys)
    assert code == 0, err
    return json.loads(out)


def rows(data: dict) -> dict[str, dict]:
    return {row["mode"]: row for row in data["rows"]}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_intervene_block_by_block_equals_memory(folders, family, capsys):
    memory = intervene(folders[family], "none", capsys)
    blocks = intervene(folders[family], "blocks", capsys)
    assert differences(memory, blocks) == []
    assert (memory["execution"]["offload"], blocks["execution"]["offload"]) == ("none", "blocks")
    # a real result: the survey finds the planted site, and zeroing it there changes perplexity
    assert blocks["survey"]["main_block"] == PLANT_BLOCK and blocks["blocks"] == [PLANT_BLOCK]
    assert PLANT_DIM in [row["dim"] for row in blocks["survey"]["dims"]]
    by_mode = rows(blocks)
    assert set(by_mode) == {"original", "zero", "mean", "random"}
    assert by_mode["zero"]["sites"] > 0 and by_mode["random"]["sites"] == by_mode["zero"]["sites"]
    original, zero = by_mode["original"]["perplexity"], by_mode["zero"]["perplexity"]
    assert abs(zero - original) > 1e-4 * original


def test_every_block_from_l_with_outputs_on_disk(folders, capsys, monkeypatch):
    """Several hooked blocks (each with its own random generator), and block outputs spilled to disk."""
    spills, reads = [], []
    put, walk = blockwise.ActivationStore.put, blockwise.run_blockwise

    def counted(self, batch, output, generation):
        put(self, batch, output, generation)
        spills.append(self.spilled)

    def read_once(offload, batches, *args, **kwargs):
        reads.append(len(batches))
        return walk(offload, batches, *args, **kwargs)

    monkeypatch.setattr(blockwise.ActivationStore, "put", counted)
    monkeypatch.setattr(blockwise, "run_blockwise", read_once)
    folder = folders["llama"]
    memory = intervene(folder, "none", capsys, "--block", "1-")
    spilled = intervene(folder, "blocks", capsys, "--block", "1-", "--max-memory", "1KB")
    assert spills and max(spills) > 0  # the block outputs went to disk
    # the model is read once per walk over windows: the survey, the survey with zero on, one perplexity per mode
    assert reads == [2, 2] + [2] * 4
    assert differences(memory, spilled) == []
    assert rows(spilled)["random"]["blocks"] == [1, 2, 3]
    assert set(rows(spilled)["random"]["sites_by_block"]) == {"1", "2", "3"}


def test_tasks_refused_block_by_block(folders, capsys):
    code, _, err = run(
        ["intervene", str(folders["llama"]), "--tasks", "nonexistent-task", "--offload", "blocks", "--device", "cpu"],
        capsys,
    )
    assert code == 2 and "block by block" in err
