"""The corpus scan: stream token windows through the model in batches, aggregate every sequence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from massact.capture.stats import capture_block_stats
from massact.corpus.summary import CorpusSummary
from massact.detect import Thresholds, token_kind
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure

MIN_TOP_K = 3


class TokenText:
    """Decoded token strings and special flags, cached per token id."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        if token_id not in self._cache:
            self._cache[token_id] = self.tokenizer.decode([token_id]) if self.tokenizer is not None else str(token_id)
        return self._cache[token_id]

    def kinds_and_texts(self, ids: Sequence[int], first: int) -> tuple[list[str], list[str]]:
        """Per position: token text and kind; position `first` is the sequence's first real token."""
        texts = [self.text(i) for i in ids]
        kinds = [token_kind(t, p - first, i in self.special) if p >= first else "padding" for p, (t, i) in
                 enumerate(zip(texts, ids, strict=True))]  # fmt: skip
        return texts, kinds


def check_seq_len(loaded: LoadedModel, seq_len: int) -> None:
    limit = loaded.context_length
    if seq_len < 1:
        raise MassactError(f"--seq-len {seq_len}: must be at least 1")
    if limit is not None and seq_len > limit:
        raise MassactError(f"--seq-len {seq_len} is longer than the model's context ({limit} tokens); lower --seq-len")


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
) -> CorpusSummary:
    """Scan `windows` [N, L] (ids of each row in `window_ids`, default 0..N-1) and aggregate them.

    An `attention_mask` [N, L] marks right padding; padded positions are left out of every statistic.
    """
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise MassactError("no sequences to scan; give --samples of at least 1")
    if batch_size < 1:
        raise MassactError(f"--batch-size {batch_size}: must be at least 1")
    thresholds = thresholds or Thresholds()
    window_ids = list(range(windows.shape[0])) if window_ids is None else list(window_ids)
    structure = find_structure(loaded.model, blocks_path)
    texts = TokenText(loaded.tokenizer)
    summary: CorpusSummary | None = None
    device = loaded.device
    bar = tqdm(total=windows.shape[0], unit="seq", desc="corpus scan", disable=not progress, leave=False)
    top_k = max(top_k, MIN_TOP_K)
    with capture_block_stats(loaded.model, structure, top_k=top_k, thresholds=thresholds) as collector:
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start : start + batch_size]
            mask = torch.ones_like(ids) if attention_mask is None else attention_mask[start : start + batch_size]
            with torch.no_grad():
                loaded.model(input_ids=ids.to(device), attention_mask=mask.to(device))
            for offset, record in enumerate(collector.pop()):
                row = start + offset
                if summary is None:
                    hidden = int(record.blocks[0].dim_max.numel())
                    summary = CorpusSummary(loaded.name, hidden, len(structure), thresholds, top_k, windows.shape[1])
                valid = mask[offset].bool()
                first = int(valid.nonzero()[0]) if valid.any() else 0
                tokens, kinds = texts.kinds_and_texts(ids[offset].tolist(), first)
                summary.add(record, source, window_ids[row], tokens, kinds)
            bar.update(ids.shape[0])
    bar.close()
    assert summary is not None
    return summary.canonical()
