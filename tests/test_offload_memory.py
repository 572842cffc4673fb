"""Block execution holds one block's weights at a time: every tensor read for a block (and the embedding or the
head read with it) is freed before the next block is read, unless the budget allows reading ahead."""

from __future__ import annotations

import gc
import weakref

import pytest
from offload_models import saved_family

from massact.corpus import CorpusConfig
from massact.corpus import run as corpus_run
from massact.models.loading import load_model
from massact.models.offload import BlockOffload


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])  # a BOS; none; fused experts
def test_each_blocks_weights_are_freed_before_the_next_block_is_read(family, tmp_path, monkeypatch):
    folder = saved_family(family, tmp_path)
    loaded = load_model(str(folder), device="cpu", offload="blocks", max_memory="1KB")  # no room to read ahead
    blocks = {id(block) for block in loaded.offload.structure.blocks}
    read = BlockOffload.read
    held: list[list[weakref.ref]] = []  # the tensors of each block read, weakly
    alive_at_read: list[int] = []

    def watched(self, modules, recurse=True):
        modules = list(modules)
        if any(id(m) in blocks for m in modules):
            gc.collect()
            alive_at_read.append(sum(ref() is not None for refs in held for ref in refs))
        values = read(self, modules, recurse)
        if any(id(m) in blocks for m in modules):
            held.append([weakref.ref(t) for t in values.values()])
        return values

    monkeypatch.setattr(BlockOffload, "read", watched)
    result = corpus_run(loaded, str(folder / "corpus.txt"), CorpusConfig(samples=4, seq_len=16, progress=False))
    assert result.to_json()["execution"]["offload"] == "blocks"
    count = len(blocks)
    assert len(alive_at_read) == count and all(len(refs) > 0 for refs in held)
    assert alive_at_read == [0] * count  # nothing of an earlier block is alive when the next is read
