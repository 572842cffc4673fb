"""Streaming per-block statistics of block outputs, computed inside forward hooks.

Each forward pass yields, per sequence and per block, a small `BlockRecord`:
top-k activations, the median magnitude, per-dim and per-token maxima and the
entries that pass the massive-activation criterion. The hidden states
themselves are dropped, except for the blocks the caller asks to keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from massact.capture.hooks import forward_hooks, forward_pre_hook, output_tensor
from massact.detect import Thresholds
from massact.models.structure import Structure

MAX_MASSIVE_PER_BLOCK = 4096
MAX_NONFINITE_LISTED = 32


@dataclass
class BlockRecord:
    """One block's output on one sequence, summarised."""

    median: float
    top_values: torch.Tensor  # signed, largest magnitude first
    top_tokens: torch.Tensor  # token positions
    top_dims: torch.Tensor
    dim_max: torch.Tensor  # [hidden] max |x| per feature dim
    token_max: torch.Tensor  # [tokens] max |x| per valid token
    positions: torch.Tensor  # [tokens] positions of the valid tokens
    massive_tokens: torch.Tensor
    massive_dims: torch.Tensor
    massive_values: torch.Tensor
    massive_truncated: bool = False
    nonfinite: int = 0
    nonfinite_sites: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def top_magnitudes(self) -> torch.Tensor:
        return self.top_values.abs()


@dataclass
class SequenceRecord:
    """All blocks of one sequence, plus any block outputs kept on request."""

    blocks: list[BlockRecord]
    kept: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def positions(self) -> torch.Tensor:
        return self.blocks[0].positions


def median_magnitude(magnitudes: torch.Tensor) -> float:
    """Lower median of a flat tensor of magnitudes (the torch.median convention)."""
    n = magnitudes.numel()
    if n == 0:
        return float("nan")
    k = (n - 1) // 2
    if magnitudes.device.type == "cpu":
        flat = magnitudes.reshape(-1).numpy()
        return float(np.partition(flat, k)[k])
    return float(magnitudes.reshape(-1).kthvalue(k + 1).values)


def summarize_hidden(
    hidden: torch.Tensor,
    positions: torch.Tensor | None = None,
    top_k: int = 16,
    thresholds: Thresholds | None = None,
) -> BlockRecord:
    """Summarise one block output `hidden` of shape [tokens, dims] (valid tokens only)."""
    thresholds = thresholds or Thresholds()
    tokens, dims = hidden.shape
    if positions is None:
        positions = torch.arange(tokens)
    x = hidden.detach().float()
    mags = x.abs()
    finite = torch.isfinite(mags)
    nonfinite = int(finite.numel() - finite.sum())
    sites: list[tuple[int, int, float]] = []
    if nonfinite:
        bad = (~finite).nonzero()[:MAX_NONFINITE_LISTED].cpu()
        pos = positions.cpu()
        sites = [(int(pos[t]), int(d), float(x[t, d])) for t, d in bad.tolist()]
        mags = torch.where(finite, mags, torch.zeros((), dtype=mags.dtype, device=mags.device))
        median = median_magnitude(mags[finite].cpu())
    else:
        median = median_magnitude(mags)
    flat = mags.reshape(-1)
    k = min(top_k, flat.numel())
    top_mag, top_idx = flat.topk(k)
    cutoff = thresholds.cutoff(median) if median == median else float("inf")
    hits = (flat > thresholds.abs) & (flat >= cutoff)
    hit_idx = hits.nonzero().reshape(-1)
    truncated = hit_idx.numel() > MAX_MASSIVE_PER_BLOCK
    if truncated:
        order = flat[hit_idx].topk(MAX_MASSIVE_PER_BLOCK).indices
        hit_idx = hit_idx[order]
    pos = positions.to(flat.device)
    return BlockRecord(
        median=median,
        top_values=x.reshape(-1)[top_idx].cpu(),
        top_tokens=pos[top_idx // dims].cpu(),
        top_dims=(top_idx % dims).cpu(),
        dim_max=mags.amax(0).cpu(),
        token_max=mags.amax(1).cpu(),
        positions=positions.cpu(),
        massive_tokens=pos[hit_idx // dims].cpu(),
        massive_dims=(hit_idx % dims).cpu(),
        massive_values=x.reshape(-1)[hit_idx].cpu(),
        massive_truncated=truncated,
        nonfinite=nonfinite,
        nonfinite_sites=sites,
    )


class BlockStatsCollector:
    """Receives block outputs from hooks and turns them into `SequenceRecord`s."""

    def __init__(
        self,
        structure: Structure,
        top_k: int = 16,
        thresholds: Thresholds | None = None,
        keep: Iterable[int] = (),
    ) -> None:
        self.structure = structure
        self.top_k = top_k
        self.thresholds = thresholds or Thresholds()
        self.keep = set(keep)
        self.attention_mask: torch.Tensor | None = None
        self._auto_mask: torch.Tensor | None = None
        self._pending: dict[int, list[BlockRecord | None]] = {}
        self._kept: dict[int, dict[int, torch.Tensor]] = {}

    def _grab_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._auto_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _mask_for(self, batch: int, tokens: int) -> torch.Tensor | None:
        mask = self.attention_mask if self.attention_mask is not None else self._auto_mask
        if mask is None or tuple(mask.shape) != (batch, tokens):
            return None
        return mask.bool()

    def hook_for(self, index: int):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            hidden = output_tensor(output)
            if hidden.dim() == 2:
                hidden = hidden.unsqueeze(0)
            batch, tokens, _ = hidden.shape
            mask = self._mask_for(batch, tokens)
            all_positions = torch.arange(tokens, device=hidden.device)
            for b in range(batch):
                if mask is None:
                    x, positions = hidden[b], all_positions
                else:
                    valid = mask[b].to(hidden.device)
                    x, positions = hidden[b][valid], all_positions[valid]
                record = summarize_hidden(x, positions, self.top_k, self.thresholds)
                self._pending.setdefault(b, [None] * len(self.structure))[index] = record
                if index in self.keep:
                    self._kept.setdefault(b, {})[index] = x.detach().to("cpu", copy=True)

        return hook

    def pop(self) -> list[SequenceRecord]:
        """The records of the forward passes since the last pop, one per sequence."""
        records = []
        for b in sorted(self._pending):
            blocks = self._pending[b]
            missing = [i for i, r in enumerate(blocks) if r is None]
            if missing:
                raise RuntimeError(f"blocks {missing} did not run in the forward pass")
            records.append(SequenceRecord(blocks=blocks, kept=self._kept.get(b, {})))  # type: ignore[arg-type]
        self._pending, self._kept = {}, {}
        return records


@contextmanager
def capture_block_stats(
    model: nn.Module,
    structure: Structure,
    *,
    top_k: int = 16,
    thresholds: Thresholds | None = None,
    keep: Iterable[int] = (),
) -> Iterator[BlockStatsCollector]:
    """Hook every block of `model`; yields a collector whose `pop()` gives per-sequence records."""
    collector = BlockStatsCollector(structure, top_k=top_k, thresholds=thresholds, keep=keep)
    hooks = [(block, collector.hook_for(i)) for i, block in enumerate(structure.blocks)]
    with forward_pre_hook(model, collector._grab_mask), forward_hooks(hooks):
        yield collector
