"""The bundled SmolLM2 block by block: `scan --corpus shakespeare` and `quant` give the in-memory JSON."""

from __future__ import annotations

import json

import pytest
from cli_runner import run
from offload_models import differences

pytestmark = pytest.mark.slow

CORPUS = ["--corpus", "shakespeare", "--samples", "4", "--seq-len", "64", "--batch-size", "2"]


def both_ways(argv: list[str], capsys) -> tuple[dict, dict]:
    results = []
    for offload in ("none", "blocks"):
        code, out, err = run([*argv, "--dtype", "float32", "--device", "cpu", "--json", "--offload", offload], capsys)
        assert code == 0, err
        results.append(json.loads(out))
    return results[0], results[1]


def test_corpus_scan_is_the_same_block_by_block(capsys):
    memory, blocks = both_ways(["scan", "default", *CORPUS], capsys)
    assert differences(memory, blocks) == []
    assert blocks["execution"]["offload"] == "blocks"
    # SmolLM2's massive dim, 507 (PAPER.md section 7), found by both
    assert 507 in {site["dim"] for site in blocks["sites"] if site["kind"] == "massive"}


def test_quant_is_the_same_block_by_block(capsys):
    extra = ["--schemes", "W8A8,W4A8", "--strategies", "none,outlier-tokens,rotate", "--calib-samples", "2"]
    memory, blocks = both_ways(["quant", "default", *CORPUS, *extra, "--sensitivity-samples", "2"], capsys)
    assert differences(memory, blocks) == []
    assert blocks["execution"]["offload"] == "blocks"
    perplexities = [blocks["baseline"]["perplexity"], *(row["perplexity"] for row in blocks["rows"])]
    assert len(perplexities) == 7 and all(1 < p < float("inf") for p in perplexities)
    assert len(blocks["sensitivity"]["blocks"]) == 30
