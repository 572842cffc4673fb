"""Streaming per-block statistics of block outputs, computed inside forward hooks.

Each forward pass yields, per sequence and per block, a small `BlockRecord`:
top-k activations, the median magnitude, per-dim and per-token maxima and the
entries that pass the massive-activation criterion. The hidden states
themselves are dropped, except for the blocks the caller asks to keep.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from massact.capture.hooks import HookFn, HookSet, output_tensor
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

    @property
    def all_nonfinite(self) -> bool:
        """True when every entry of the block output is inf or NaN (nothing finite to rank)."""
        return self.nonfinite > 0 and self.nonfinite == self.token_max.numel() * self.dim_max.numel()

    @property
    def nonfinite_kind(self) -> str:
        """'nan', 'inf' or 'inf/nan': what the listed non-finite entries are."""
        values = [v for _, _, v in self.nonfinite_sites]
        if values and all(v != v for v in values):
            return "nan"
        if values and all(v == v for v in values):
            return "inf"
        return "inf/nan"


@dataclass
class SequenceRecord:
    """All blocks of one sequence, plus any block outputs kept on request."""

    blocks: list[BlockRecord]
    kept: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def positions(self) -> torch.Tensor:
        return self.blocks[0].positions


def median_magnitude(magnitudes: torch.Tensor, in_place: bool = False) -> float:
    """Lower median of a tensor of magnitudes (the torch.median convention).

    With `in_place` on a contiguous CPU tensor, the values are reordered instead of copied.
    """
    n = magnitudes.numel()
    if n == 0:
        return float("nan")
    k = (n - 1) // 2
    if magnitudes.device.type != "cpu":
        return float(magnitudes.reshape(-1).kthvalue(k + 1).values)
    if in_place and magnitudes.is_contiguous():
        flat = magnitudes.view(-1).numpy()
        flat.partition(k)
        return float(flat[k])
    return float(np.partition(magnitudes.reshape(-1).numpy(), k)[k])


def nan_medians(values: torch.Tensor) -> torch.Tensor:
    """Lower median of each row of `values` [rows, ...], NaN left out (NaN for a row without any).

    The same value `median_magnitude` gives on the kept entries, computed without leaving the device.
    """
    return torch.nanmedian(values.reshape(values.shape[0], -1), dim=1).values


def summarize_hidden(
    hidden: torch.Tensor,
    positions: torch.Tensor | None = None,
    top_k: int = 16,
    thresholds: Thresholds | None = None,
) -> BlockRecord:
    """Summarise one block output `hidden` of shape [tokens, dims] (valid tokens only).

    One temporary of the output's size (its magnitudes, float32) is made; the median is
    found by partitioning it in place, last.
    """
    thresholds = thresholds or Thresholds()
    tokens, dims = hidden.shape
    if positions is None:
        positions = torch.arange(tokens)
    x = hidden.detach()
    mags = x.abs() if x.dtype == torch.float32 else x.float().abs_()
    token_max = mags.amax(1)
    nonfinite, sites = 0, []
    finite: torch.Tensor | None = None
    if not bool(torch.isfinite(token_max).all()):  # inf/NaN: listed, then left out of every statistic
        finite = torch.isfinite(mags)
        nonfinite = int(finite.numel() - finite.sum())
        bad = (~finite).nonzero()[:MAX_NONFINITE_LISTED].cpu()
        pos_cpu = positions.cpu()
        sites = [(int(pos_cpu[t]), int(d), float(x[t, d])) for t, d in bad.tolist()]
        mags.masked_fill_(~finite, 0.0)
        token_max = mags.amax(1)
    dim_max = mags.amax(0)
    # The k largest entries lie in the k tokens with the largest maxima: rank those rows only.
    k = min(top_k, mags.numel())
    rows = token_max.topk(min(k, tokens)).indices
    _, flat_idx = mags[rows].reshape(-1).topk(k)
    top_rows, top_dims = rows[flat_idx // dims], flat_idx % dims
    candidates = (mags > thresholds.abs).nonzero()
    candidate_values = x[candidates[:, 0], candidates[:, 1]].float()
    # In place reorders `mags`: nothing reads it after this.
    median = median_magnitude(mags, in_place=True) if finite is None else median_magnitude(mags[finite])
    keep = thresholds.massive(candidate_values.abs(), median)  # a NaN median (nothing finite) selects nothing
    candidates, candidate_values = candidates[keep], candidate_values[keep]
    truncated = candidates.shape[0] > MAX_MASSIVE_PER_BLOCK
    if truncated:
        order = candidate_values.abs().topk(MAX_MASSIVE_PER_BLOCK).indices
        candidates, candidate_values = candidates[order], candidate_values[order]
    pos = positions.to(x.device)
    return BlockRecord(
        median=median,
        top_values=x[top_rows, top_dims].float().cpu(),
        top_tokens=pos[top_rows].cpu(),
        top_dims=top_dims.cpu(),
        dim_max=dim_max.cpu(),
        token_max=token_max.cpu(),
        positions=positions.cpu(),
        massive_tokens=pos[candidates[:, 0]].cpu(),
        massive_dims=candidates[:, 1].cpu(),
        massive_values=candidate_values.cpu(),
        massive_truncated=truncated,
        nonfinite=nonfinite,
        nonfinite_sites=sites,
    )


@dataclass
class PendingBlock:
    """One block's summary as fixed-size tensors on the model's device, read back after the forward.

    Built inside the hook without a host synchronisation (no `.item()`, `.cpu()`, boolean indexing or
    `nonzero()`); `finish()` turns it into the same `BlockRecord` `summarize_hidden` gives.
    """

    median: torch.Tensor  # 0-d, NaN when nothing is finite
    top_values: torch.Tensor
    top_tokens: torch.Tensor
    top_dims: torch.Tensor
    dim_max: torch.Tensor
    token_max: torch.Tensor  # every token, padding included (dropped in finish)
    valid: torch.Tensor | None  # [tokens] bool, None when every token is real
    massive_index: torch.Tensor  # flat indices of the largest criterion hits, by magnitude
    massive_values: torch.Tensor
    massive_hit: torch.Tensor  # whether each listed index passed the criterion
    hits: torch.Tensor  # 0-d count of entries that pass the criterion
    nonfinite: torch.Tensor  # 0-d count
    nonfinite_sites: torch.Tensor  # [MAX_NONFINITE_LISTED, 2] (token, dim), -1 past the last
    nonfinite_values: torch.Tensor

    def finish(self) -> BlockRecord:
        """Read the tensors back (the one synchronisation) and select what the hook could not."""
        p = PendingBlock(*(t if t is None else t.cpu() for t in self.__dict__.values()))
        tokens, dims = p.token_max.numel(), p.dim_max.numel()
        valid = torch.ones(tokens, dtype=torch.bool) if p.valid is None else p.valid
        positions = torch.arange(tokens)[valid]
        top = valid[p.top_tokens]
        index, values = p.massive_index[p.massive_hit], p.massive_values[p.massive_hit]
        truncated = int(p.hits) > MAX_MASSIVE_PER_BLOCK
        if not truncated:  # as `nonzero()` lists them: token by token
            order = index.argsort()
            index, values = index[order], values[order]
        listed = p.nonfinite_sites[:, 0] >= 0
        sites = [
            (int(t), int(d), float(v))
            for (t, d), v in zip(p.nonfinite_sites[listed].tolist(), p.nonfinite_values[listed].tolist())
        ]
        return BlockRecord(
            median=float(p.median),
            top_values=p.top_values[top],
            top_tokens=p.top_tokens[top],
            top_dims=p.top_dims[top],
            dim_max=p.dim_max,
            token_max=p.token_max[valid],
            positions=positions,
            massive_tokens=index // dims,
            massive_dims=index % dims,
            massive_values=values,
            massive_truncated=truncated,
            nonfinite=int(p.nonfinite),
            nonfinite_sites=sites,
        )


def summarize_deferred(
    hidden: torch.Tensor, valid: torch.Tensor | None, top_k: int = 16, thresholds: Thresholds | None = None
) -> PendingBlock:
    """`summarize_hidden` for an accelerator: every result stays a fixed-size tensor on the device.

    `hidden` [tokens, dims] holds padding too; `valid` [tokens] marks the real tokens (None: all).
    Padding and inf/NaN are set to NaN for the median (`nanmedian`, the same lower median) and to 0
    for every maximum and ranking.
    """
    thresholds = thresholds or Thresholds()
    tokens, dims = hidden.shape
    x = hidden.detach()
    mags = x.float().abs()
    finite = torch.isfinite(mags)
    bad = ~finite if valid is None else ~finite & valid[:, None]
    counted = finite if valid is None else finite & valid[:, None]
    sites = torch.nonzero_static(bad, size=MAX_NONFINITE_LISTED, fill_value=-1)
    mags.masked_fill_(~counted, float("nan"))
    median = nan_medians(mags.unsqueeze(0))[0]
    mags.nan_to_num_(nan=0.0)
    token_max, dim_max = mags.amax(1), mags.amax(0)
    k = min(top_k, mags.numel())
    rows = token_max.topk(min(k, tokens)).indices
    _, flat_idx = mags[rows].reshape(-1).topk(k)
    top_rows, top_dims = rows[flat_idx // dims], flat_idx % dims
    hit = thresholds.massive(mags, median)
    ranked, index = torch.where(hit, mags, -1.0).view(-1).topk(min(MAX_MASSIVE_PER_BLOCK, mags.numel()))
    clamped = sites.clamp(min=0)
    return PendingBlock(
        median=median,
        top_values=x[top_rows, top_dims].float(),
        top_tokens=top_rows,
        top_dims=top_dims,
        dim_max=dim_max,
        token_max=token_max,
        valid=valid,
        massive_index=index,
        massive_values=x.view(-1)[index].float(),
        massive_hit=ranked >= 0,
        hits=hit.sum(),
        nonfinite=bad.sum(),
        nonfinite_sites=sites,
        nonfinite_values=x[clamped[:, 0], clamped[:, 1]].float(),
    )


class BlockStatsCollector(HookSet):
    """Hooks every block's output and turns it into `SequenceRecord`s (padding left out via the grabbed mask)."""

    per_forward = ("_pending", "_kept")

    def __init__(
        self,
        model: nn.Module,
        structure: Structure,
        top_k: int = 16,
        thresholds: Thresholds | None = None,
        keep: Iterable[int] = (),
        deferred: bool | None = None,
    ) -> None:
        super().__init__(model)
        self.structure = structure
        self.top_k = top_k
        self.thresholds = thresholds or Thresholds()
        self.keep = set(keep)
        self.deferred = deferred  # None: on accelerators only (no host synchronisation inside the forward)
        self._pending: dict[int, list[BlockRecord | PendingBlock | None]] = {}
        self._kept: dict[int, dict[int, torch.Tensor]] = {}

    def forward_hooks(self) -> Iterable[tuple[nn.Module, HookFn]]:
        return [(block, self.hook_for(i)) for i, block in enumerate(self.structure.blocks)]

    def hook_for(self, index: int) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            hidden = output_tensor(output)
            if hidden.dim() == 2:
                hidden = hidden.unsqueeze(0)
            batch, tokens, _ = hidden.shape
            mask = self.valid_mask(batch, tokens, hidden.device)
            if self.deferred or (self.deferred is None and hidden.device.type != "cpu"):
                for b in range(batch):
                    valid = None if mask is None else mask[b]
                    pending = summarize_deferred(hidden[b], valid, self.top_k, self.thresholds)
                    self._pending.setdefault(b, [None] * len(self.structure))[index] = pending
                    if index in self.keep:  # the whole output, padding too: trimmed in pop()
                        self._kept.setdefault(b, {})[index] = hidden[b].detach().clone()
                return
            all_positions = torch.arange(tokens, device=hidden.device)
            for b in range(batch):
                if mask is None:
                    x, positions = hidden[b], all_positions
                else:
                    x, positions = hidden[b][mask[b]], all_positions[mask[b]]
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
            kept = self._kept.get(b, {})
            if isinstance(blocks[0], PendingBlock):
                valid = blocks[0].valid
                kept = {i: (x if valid is None else x[valid]).cpu() for i, x in kept.items()}
                blocks = [r.finish() for r in blocks]  # type: ignore[union-attr]
            records.append(SequenceRecord(blocks=blocks, kept=kept))  # type: ignore[arg-type]
        self._pending, self._kept = {}, {}
        return records


# Hook every block of a model, as a context manager: `with capture_block_stats(model, structure, top_k=16,
# thresholds=..., keep=(), deferred=None) as collector:`; `collector.pop()` gives per-sequence records. On an
# accelerator (or with `deferred=True`) the hooks keep device tensors only and make no host synchronisation;
# everything is read back in `pop()`, after the forward.
capture_block_stats = BlockStatsCollector
