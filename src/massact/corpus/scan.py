"""`scan_corpus`: corpus + model -> one `CorpusSummary`, on one process or many."""

from __future__ import annotations

from massact.corpus.distributed import gather_summaries, launched_distributed, process_state, shard
from massact.corpus.run import check_seq_len, corpus_scan
from massact.corpus.summary import CorpusSummary
from massact.data.corpus import corpus_windows, load_texts
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.loading import LoadedModel


def check_counts(samples: int, seq_len: int, batch_size: int) -> None:
    """Refuse impossible sizes before any work."""
    for flag, value in (("--samples", samples), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if value < 1:
            raise MassactError(f"{flag} {value}: must be at least 1")


def source_name(corpus: str, seq_len: int) -> str:
    """Names the windows' origin; runs with the same name draw window ids from the same token stream."""
    return f"{corpus}|seq_len={seq_len}"


def scan_corpus(
    loaded: LoadedModel,
    corpus: str = "shakespeare",
    *,
    samples: int = 64,
    seq_len: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    top_k: int = 16,
    blocks_path: str | None = None,
    texts: list[str] | None = None,
    state=None,
    progress: bool = True,
) -> CorpusSummary | None:
    """Scan `samples` windows of `corpus`; with a distributed `state`, this process's share, merged on main.

    Returns the summary (None on non-main processes of a distributed run).
    """
    check_counts(samples, seq_len, batch_size)
    check_seq_len(loaded, seq_len)
    texts = load_texts(corpus) if texts is None else texts
    windows, window_ids = corpus_windows(loaded.tokenizer, texts, samples, seq_len, seed)
    source = source_name(corpus, seq_len)
    kwargs = dict(source=source, batch_size=batch_size, thresholds=thresholds, top_k=top_k, blocks_path=blocks_path)
    if state is None or state.num_processes == 1:
        return corpus_scan(loaded, windows, window_ids, progress=progress, **kwargs)
    share = shard(samples, state.process_index, state.num_processes)
    part = None
    if len(share):
        part = corpus_scan(
            loaded, windows[share.start : share.stop], window_ids[share.start : share.stop],
            progress=progress and state.is_main_process, **kwargs,
        )  # fmt: skip
    return gather_summaries(state, part)


def distributed_state(device: str | None):
    """The process state when launched with several processes, else None."""
    return process_state(device) if launched_distributed() else None
