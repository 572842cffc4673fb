"""`CorpusResult`: a corpus scan (or a merge of several) as JSON, terminal table and files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from massact.corpus.report import derived, terminal_summary, write_corpus_outputs
from massact.corpus.summary import CorpusSummary


@dataclass
class CorpusResult:
    """The corpus-wide statistics of `summary`; `write` puts corpus.json, means.json, summary.*, report.md
    and the figures into a folder."""

    summary: CorpusSummary
    command: str | None = None  # the command line, for report.md

    def to_json(self) -> dict:
        return derived(self.summary)

    def show(self, console: Console) -> None:
        terminal_summary(self.summary, console)

    def write(self, out: Path) -> None:
        write_corpus_outputs(self.summary, out, self.command)
