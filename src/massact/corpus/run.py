"""The corpus scan: stream token windows through the model in batches, aggregate every sequence.

`run(loaded, corpus_or_inputs, CorpusConfig)` is the entry point; `corpus_scan` scans windows already cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from massact.capture.forward import walk_windows, without_logits
from massact.capture.peaks import BlockPeaks
from massact.capture.stats import capture_block_stats
from massact.corpus.config import CorpusConfig
from massact.corpus.distributed import gather_summaries, launch_state, shard
from massact.corpus.result import CorpusResult
from massact.corpus.summary import CorpusSummary
from massact.data.corpus import CorpusInputs, corpus_windows, prefix_tokens, window_source
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import Structure, find_structure
from massact.precision import Precision
from massact.tokens import TokenText
from massact.validate import at_least, check_context

MIN_TOP_K = 3


def check_seq_len(loaded: LoadedModel, seq_len: int) -> None:
    at_least("seq_len", seq_len)
    check_context("seq_len", seq_len, loaded.context_length)


def corpus_scan(
    loaded: LoadedModel,
    windows: torch.Tensor,
    window_ids: Sequence[int] | None = None,
    *,
    source: str = "corpus",
    batch_size: int = 8,
    thresholds: Thresholds | None = None,
    top_k: int = 16,
    attention_mask: torch.Tensor | None = None,
    blocks_path: str | None = None,
    progress: bool = True,
    structure: Structure | None = None,
    prefix_tokens: Sequence[str] = (),
) -> CorpusSummary:
    """Scan `windows` [N, L] (ids of each row in `window_ids`, default 0..N-1) and aggregate them.

    An `attention_mask` [N, L] marks right padding; padded positions are left out of every statistic.
    `prefix_tokens` names what every window starts with (the tokenizer's BOS), for the record.
    """
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise MassactError(f"no sequences to scan: `windows` must be [N >= 1, L] token ids, got {tuple(windows.shape)}")
    at_least("batch_size", batch_size)
    thresholds = thresholds or Thresholds()
    window_ids = list(range(windows.shape[0])) if window_ids is None else list(window_ids)
    structure = structure or find_structure(loaded.model, blocks_path)
    texts = TokenText(loaded.tokenizer)
    summary: CorpusSummary | None = None
    top_k = max(top_k, MIN_TOP_K)
    masks = torch.ones_like(windows) if attention_mask is None else attention_mask

    def consume(start: int, ids: torch.Tensor, output: object) -> None:
        nonlocal summary
        for offset, record in enumerate(collector.pop()):
            row = start + offset
            if summary is None:
                hidden = int(record.blocks[0].dim_max.numel())
                summary = CorpusSummary(
                    loaded.name, hidden, len(structure), thresholds, top_k, windows.shape[1],
                    prefix_tokens=list(prefix_tokens),
                )  # fmt: skip
            valid = masks[row].bool()
            first = int(valid.nonzero()[0]) if valid.any() else 0
            tokens, kinds = texts.kinds_and_texts(windows[row].tolist(), first)
            summary.add(record, source, window_ids[row], tokens, kinds)

    with capture_block_stats(loaded.model, structure, top_k=top_k, thresholds=thresholds) as collector:
        walk_windows(
            loaded.model, windows, batch_size, consume, masks, "corpus scan", progress, **without_logits(loaded.model)
        )
    assert summary is not None
    return summary.canonical()


def source_name(corpus: str, seq_len: int, prefix: list[str] | tuple[str, ...] = ()) -> str:
    """Names the windows' origin; runs with the same name draw window ids from the same token stream."""
    return window_source(corpus, seq_len, prefix)


def run(
    loaded: LoadedModel, inputs: str | CorpusInputs = "shakespeare", config: CorpusConfig | None = None
) -> CorpusResult:
    """Scan `config.samples` windows of a corpus: `inputs` is its name or path, or `CorpusInputs` with its texts
    (or with windows already cut, scanned as they are).

    Under a data-parallel launch every process scans its share and gets the merged result; only the
    main one has `is_main` (the one that writes). `config.shard` scans one part by hand instead.
    """
    config = config or CorpusConfig()  # sizes checked when it was built
    inputs = CorpusInputs(inputs) if isinstance(inputs, str) else inputs
    corpus = inputs.corpus
    if inputs.windows is not None:  # cut already: scanned as they are, window ids 0..N-1
        windows, window_ids, prefix = inputs.windows, list(range(inputs.windows.shape[0])), []
        check_seq_len(loaded, windows.shape[1])
        source = corpus
    else:
        check_seq_len(loaded, config.seq_len)
        windows, window_ids = corpus_windows(
            loaded.tokenizer, inputs.documents(), config.samples, config.seq_len, config.seed, config.add_special_tokens
        )
        prefix = prefix_tokens(loaded.tokenizer, config.add_special_tokens)
        source = source_name(corpus, config.seq_len, prefix)
    count = windows.shape[0]
    structure = find_structure(loaded.model, config.blocks_path)
    kwargs = dict(
        source=source, batch_size=config.batch_size,
        thresholds=config.thresholds, top_k=config.top_k, structure=structure, prefix_tokens=prefix,
    )  # fmt: skip
    if config.shard is not None:
        part = shard(count, *config.shard)
        windows, window_ids = windows[part.start : part.stop], window_ids[part.start : part.stop]
    state = launch_state()
    if state is None or state.num_processes == 1:
        with BlockPeaks(loaded.model, structure) as peaks:
            summary = corpus_scan(loaded, windows, window_ids, progress=config.progress, **kwargs)
        return CorpusResult(summary, precision=Precision.from_peaks(peaks), execution=loaded.execution())
    if config.shard is not None:
        raise MassactError("`shard` splits a run by hand; a data-parallel launch splits it already: drop one")
    share = shard(count, state.process_index, state.num_processes)
    part = None
    if len(share):
        part = corpus_scan(
            loaded, windows[share.start : share.stop], window_ids[share.start : share.stop],
            progress=config.progress and state.is_main_process, **kwargs,
        )  # fmt: skip
    return CorpusResult(gather_summaries(part), is_main=state.is_main_process)
