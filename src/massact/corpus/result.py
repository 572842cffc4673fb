"""`CorpusResult`: a corpus scan (or a merge of several) as JSON, terminal table and files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from massact.corpus.report import corpus_json, terminal_summary, write_corpus_outputs
from massact.corpus.summary import CorpusSummary
from massact.html.registry import result_kind
from massact.precision import Precision


@result_kind("corpus", "corpus.json")
@dataclass
class CorpusResult:
    """The corpus-wide statistics of `summary`; `write` puts corpus.json, means.json, summary.*, report.md
    and the figures into a folder."""

    summary: CorpusSummary
    command: str | None = None  # the command line, for report.md
    precision: Precision | None = None  # whether the run's dtype held the block outputs (not kept by a merge)
    is_main: bool = True  # False on every process but the main one of a data-parallel run: it alone writes
    execution: dict | None = None  # how the run executed (`LoadedModel.execution`); None for a merge

    def to_json(self) -> dict:
        return corpus_json(self.summary, self.precision, self.execution)

    def show(self, console: Console) -> None:
        terminal_summary(self.summary, console)
        if self.precision is not None:
            self.precision.show(console)

    def write(self, out: Path) -> None:
        write_corpus_outputs(self.summary, out, self.command, self.precision, self.execution)
