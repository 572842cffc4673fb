"""Merge the summaries of corpus scans of disjoint windows into one result."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from pathlib import Path

from massact.corpus.result import CorpusResult
from massact.corpus.summary import CorpusSummary
from massact.errors import MassactError


def merge(paths: Sequence[str | Path]) -> CorpusResult:
    """One result over the runs in `paths` (each the --out folder of a corpus scan, or its summary.json)."""
    if not paths:
        raise MassactError("give at least one corpus scan folder to merge")
    summaries = [CorpusSummary.load(Path(p)) for p in paths]  # every path checked before merging any
    return CorpusResult(reduce(CorpusSummary.merge, summaries).canonical())
