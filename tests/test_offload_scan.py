"""`massact scan` block by block: the same JSON as in memory for a prompt and for a corpus (shards and their merge
included) on every tiny family, with block outputs on disk too."""

from __future__ import annotations

import json

import pytest
from cli_runner import run
from offload_models import FAMILIES, PLANT_BLOCK, PLANT_DIM, count_spills, differences, saved_family

CORPUS = ["--samples", "6", "--seq-len", "16", "--batch-size", "2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: saved_family(family, root) for family in FAMILIES}


def scan(folder, offload: str, capsys, *extra: str) -> dict:
    argv = ["scan", str(folder), *extra, "--device", "cpu", "--json", "--offload", offload]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    return json.loads(out)


def prompt(folder) -> list[str]:
    return ["--text-file", str(folder / "prompt.txt")]


def corpus(folder) -> list[str]:
    return ["--corpus", str(folder / "corpus.txt"), *CORPUS]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prompt_scan_block_by_block_equals_memory(folders, family, capsys):
    memory = scan(folders[family], "none", capsys, *prompt(folders[family]))
    blocks = scan(folders[family], "blocks", capsys, *prompt(folders[family]))
    assert differences(memory, blocks) == []
    assert (memory["execution"]["offload"], blocks["execution"]["offload"]) == ("none", "blocks")
    # a real result: the planted value is found where it was planted
    found = {(site["block"], site["dim"]) for site in blocks["massive"]}
    assert (PLANT_BLOCK, PLANT_DIM) in found


@pytest.mark.parametrize("family", list(FAMILIES))
def test_corpus_scan_block_by_block_equals_memory(folders, family, capsys):
    memory = scan(folders[family], "none", capsys, *corpus(folders[family]))
    blocks = scan(folders[family], "blocks", capsys, *corpus(folders[family]))
    assert differences(memory, blocks) == []
    assert blocks["num_sequences"] == 6
    assert (PLANT_BLOCK, PLANT_DIM) in {(site["block"], site["dim"]) for site in blocks["sites"]}


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_corpus_scan_with_block_outputs_on_disk(folders, family, capsys, monkeypatch):
    spills = count_spills(monkeypatch)
    memory = scan(folders[family], "none", capsys, *corpus(folders[family]))
    spilled = scan(folders[family], "blocks", capsys, *corpus(folders[family]), "--max-memory", "1KB")
    assert spills and max(spills) > 0
    assert differences(memory, spilled) == []


@pytest.mark.parametrize("family", ["qwen2", "mixtral"])
def test_shards_and_their_merge_block_by_block(folders, family, capsys, tmp_path):
    folder = folders[family]
    merged = {}
    for offload in ("none", "blocks"):
        runs = []
        for shard in ("0/2", "1/2"):
            out = tmp_path / offload / shard.replace("/", "-")
            argv = ["scan", str(folder), *corpus(folder), "--shard", shard, "--device", "cpu", "--offload", offload]
            code, _, err = run([*argv, "--out", str(out)], capsys)
            assert code == 0, err
            runs.append(str(out))
        code, out, err = run(["merge", *runs, "--json"], capsys)
        assert code == 0, err
        merged[offload] = json.loads(out)
    assert differences(merged["none"], merged["blocks"]) == []
    assert merged["blocks"]["num_sequences"] == 6
    assert (PLANT_BLOCK, PLANT_DIM) in {(site["block"], site["dim"]) for site in merged["blocks"]["sites"]}
