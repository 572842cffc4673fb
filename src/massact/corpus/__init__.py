"""Corpus statistics: scan many sequences, aggregate mergeable summaries, derive means for interventions."""

from massact.corpus.run import corpus_scan
from massact.corpus.scan import scan_corpus
from massact.corpus.summary import CorpusSummary, SiteStats, load_means

__all__ = ["CorpusSummary", "SiteStats", "corpus_scan", "load_means", "scan_corpus"]
