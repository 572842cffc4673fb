"""Corpus statistics: scan many sequences, aggregate mergeable summaries, derive means for interventions.

    result = massact.corpus.run(loaded, "shakespeare", CorpusConfig(samples=64, seq_len=512))
    result.to_json(); result.show(console); result.write(folder)
    merged = massact.corpus.merge([folder_a, folder_b])

Windows start as the tokenizer starts a text (its BOS); `CorpusConfig(add_special_tokens=False)` cuts
text tokens only, and `CorpusConfig(shard=(i, n))` scans part i of n so the parts merge into the whole.
"""

from massact.corpus.config import CorpusConfig, parse_shard
from massact.corpus.merge import merge
from massact.corpus.result import CorpusResult
from massact.corpus.run import run
from massact.corpus.summary import CorpusSummary, SiteStats
from massact.data.corpus import CorpusInputs
from massact.interventions.means import read_means

__all__ = [
    "CorpusConfig",
    "CorpusInputs",
    "CorpusResult",
    "CorpusSummary",
    "SiteStats",
    "merge",
    "parse_shard",
    "read_means",
    "run",
]
