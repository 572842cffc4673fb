"""The corpus scan's entry points by their older module path (they live in `massact.corpus.run`)."""

from massact.corpus.run import check_counts, distributed_state, scan_corpus, source_name

__all__ = ["check_counts", "distributed_state", "scan_corpus", "source_name"]
