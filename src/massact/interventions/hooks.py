"""Rewrite chosen (token, dim) sites of block outputs, inside a context manager.

`intervene(model, structure, sites, mode, blocks, ...)` hooks the outputs of `blocks`:

- ``zero``: the selected sites are set to 0;
- ``mean``: they are set to their mean over many sequences (`SiteMeans`), looked up by
  (block, dim, token kind);
- ``random``: the control: the same number of *other* (non-selected) entries of the same
  sequence, chosen at random with a seeded generator, are set to 0;
- ``original``: nothing is hooked.

Sites are selected per sequence and per block by `SiteSpec`: by default the detector (the
massive-activation criterion on this block's output of this sequence, without the dims in
`SiteSpec.features`: the outlier features a survey measured, dims that pass it on most tokens,
`Thresholds.feature_share`), optionally restricted to given token positions; given dims are taken as they
are; with both dims and tokens given, exactly those sites. What a token gets depends on that token and the
ones before it only, never on the later tokens or on the other sequences of a batch (padding included).
The hooks only return a rewritten copy of the block output; they come off on exit, even on error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from massact.capture.hooks import HookSet, output_tensor, replace_output_tensor
from massact.capture.stats import median_magnitude, nan_medians
from massact.defaults import MODES as MODES
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.structure import Structure
from massact.tokens import KINDS, TokenKinds


@dataclass(frozen=True)
class SiteSpec:
    """Which (token, dim) sites of a block output to rewrite."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    dims: tuple[int, ...] | None = None
    tokens: tuple[int, ...] | None = None
    features: tuple[int, ...] = ()  # outlier features (from a survey): never sites when dims are detected

    @property
    def fixed(self) -> bool:
        """True when the user named both dims and tokens: no detection."""
        return self.dims is not None and self.tokens is not None

    def detect(self, hidden: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask [batch, tokens, dims] of the selected sites of `hidden` [batch, tokens, dims].

        Detection is `Thresholds.massive` against each sequence's median magnitude (over its valid,
        finite entries); the result stays on the device.
        """
        batch, tokens, dims = hidden.shape
        device = hidden.device
        rows = _positions(tuple(self.tokens), tokens, str(device)) if self.tokens is not None else None
        cols = _positions(tuple(self.dims), dims, str(device)) if self.dims is not None else None
        if self.fixed:
            mask = torch.zeros(batch, tokens, dims, dtype=torch.bool, device=device)
            mask[:, rows.unsqueeze(1), cols.unsqueeze(0)] = True
        else:
            mags = hidden.detach().float().abs()
            mask = self.thresholds.massive(mags, sequence_medians(mags, valid).view(batch, 1, 1))
            if cols is None:  # detected dims: an outlier feature marks no token, so it is no site
                skip = _positions(self.features, dims, str(device))
                if skip.numel():
                    mask[..., skip] = False
            else:
                keep = torch.zeros(dims, dtype=torch.bool, device=device)
                keep[cols] = True
                mask &= keep.view(1, 1, dims)
            if rows is not None:
                keep = torch.zeros(tokens, dtype=torch.bool, device=device)
                keep[rows] = True
                mask &= keep.view(1, tokens, 1)
        if valid is not None:
            mask &= valid.unsqueeze(-1)
        return mask

    def check(self, hidden_size: int | None, seq_len: int | None = None) -> None:
        """Refuse dims outside the model's hidden size, and token positions outside the windows."""
        if hidden_size is not None:
            for dim in self.dims or ():
                if not 0 <= dim < hidden_size:
                    raise MassactError(f"--dims {dim} is out of range; the model has dims 0..{hidden_size - 1}")
        for token in self.tokens or ():
            if token < 0:
                raise MassactError(f"--tokens {token}: token positions start at 0")
            if seq_len is not None and token >= seq_len:
                raise MassactError(
                    f"--tokens {token} is out of range; windows of --seq-len {seq_len} have positions 0..{seq_len - 1}"
                )

    def to_json(self) -> dict:
        return {
            "dims": list(self.dims) if self.dims is not None else "detected",
            "tokens": list(self.tokens) if self.tokens is not None else "detected",
            "thresholds": self.thresholds.to_json(),
        }


@functools.lru_cache(maxsize=64)
def _positions(values: tuple[int, ...], size: int, device: str) -> torch.Tensor:
    """The `values` below `size` as an index tensor on `device`, made once (no copy per forward)."""
    return torch.tensor([v for v in values if v < size], dtype=torch.long, device=device)


def sequence_medians(mags: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Lower median of each sequence's finite magnitudes [batch, tokens, dims] -> [batch] (NaN when none).

    On the CPU each row is partitioned on its own; on an accelerator all rows at once, so no value leaves
    the device.
    """
    ok = torch.isfinite(mags)
    if valid is not None:
        ok &= valid.unsqueeze(-1)
    if mags.device.type == "cpu":
        medians = [median_magnitude(row if bool(keep.all()) else row[keep]) for row, keep in zip(mags, ok, strict=True)]
        return torch.tensor(medians, dtype=torch.float32)
    return device_medians(mags, ok)


def device_medians(mags: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """`sequence_medians` on any device, without a host synchronisation (entries where `ok` is False left out)."""
    return nan_medians(torch.where(ok, mags, torch.full_like(mags, math.nan)))


@dataclass
class SiteMeans:
    """Mean value of each (block, dim, token kind) site over many sequences."""

    hidden_size: int
    num_blocks: int
    entries: dict[tuple[int, int, str], tuple[float, int]]  # -> (mean, count)
    model: str | None = None
    source: str = ""
    windows: dict[str, list[int]] | None = None  # window source -> stream indices the means were taken over

    def blocks(self) -> set[int]:
        return {block for block, _, _ in self.entries}

    def tables(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[kinds, hidden] means by kind and [hidden] count-weighted means over kinds; NaN where unknown."""
        by_kind = torch.full((len(KINDS), self.hidden_size), math.nan, dtype=torch.float64)
        total = torch.zeros(self.hidden_size, dtype=torch.float64)
        count = torch.zeros(self.hidden_size, dtype=torch.float64)
        for (b, dim, kind), (mean, n) in self.entries.items():
            if b != block:
                continue
            if kind in KINDS:
                by_kind[KINDS.index(kind), dim] = mean
            total[dim] += mean * max(n, 1)
            count[dim] += max(n, 1)
        pooled = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))
        return by_kind, pooled

    def check(self, hidden_size: int, num_blocks: int, blocks: Sequence[int]) -> None:
        """Refuse means made for another model, or holding nothing for the intervened blocks."""
        where = self.source or "the means"
        if self.hidden_size != hidden_size:
            raise MassactError(
                f"{where} is for hidden size {self.hidden_size} but the model has {hidden_size}; "
                "give the means file of this model, or --means-samples N to compute them"
            )
        if self.num_blocks != num_blocks:
            raise MassactError(
                f"{where} is for {self.num_blocks} blocks but the model has {num_blocks}; "
                "give the means file of this model, or --means-samples N to compute them"
            )
        for block, dim, _ in self.entries:
            if not 0 <= dim < hidden_size or not 0 <= block < num_blocks:
                raise MassactError(
                    f"{where} has a site at block {block}, dim {dim}, outside this model "
                    f"({num_blocks} blocks, hidden size {hidden_size}); give the means file of this model"
                )
        if not self.blocks() & set(blocks):
            have = sorted(self.blocks())
            raise MassactError(
                f"{where} holds no means for block(s) {blocks_span(blocks)} (it has {blocks_span(have) or 'none'}); "
                "choose a --block it covers, or use --means-samples N"
            )

    def overlap(self, source: str, windows: Sequence[int]) -> int:
        """How many of `windows` (stream indices of `source`) the means were taken over."""
        return len(set(windows) & set((self.windows or {}).get(source, ())))

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "hidden_size": self.hidden_size,
            "num_blocks": self.num_blocks,
            "windows": self.windows,
            "sites": [
                {"block": b, "dim": d, "token_kind": k, "mean": mean, "count": n}
                for (b, d, k), (mean, n) in sorted(self.entries.items())
            ],
        }


def blocks_span(blocks: Sequence[int]) -> str:
    """'11-27' for a run of consecutive blocks, else '3,5-7,9'."""
    blocks = sorted(blocks)
    if not blocks:
        return ""
    runs, start, prev = [], blocks[0], blocks[0]
    for b in [*blocks[1:], None]:
        if b is None or b != prev + 1:
            runs.append(f"{start}-{prev}" if prev > start else str(start))
            start = b
        prev = b if b is not None else prev
    return ",".join(runs)


def blocks_phrase(blocks: Sequence[int]) -> str:
    """'block 28' for one block, 'blocks 11-27' (or '3,5-7') for several."""
    return f"{'block' if len(set(blocks)) == 1 else 'blocks'} {blocks_span(blocks)}"


@dataclass
class InterventionCounts:
    """How many sites each hooked block rewrote, over how many sequences."""

    sites: dict[int, int] = field(default_factory=dict)
    sequences: dict[int, int] = field(default_factory=dict)
    without_mean: int = 0

    def add(self, block: int, sites: int, sequences: int) -> None:
        self.sites[block] = self.sites.get(block, 0) + sites
        self.sequences[block] = self.sequences.get(block, 0) + sequences

    @property
    def total(self) -> int:
        return sum(self.sites.values())


class Intervention(HookSet):
    """The hooks of one `intervene` call on the outputs of `blocks`; `counts` says what they did.

    The hooks keep their counts on the device and never read a value back during the forward, except
    the random control, which draws its positions on the host (it needs each sequence's site count).
    """

    def __init__(
        self,
        model: nn.Module,
        structure: Structure,
        blocks: Sequence[int],
        mode: str,
        sites: SiteSpec,
        means: SiteMeans | None,
        kinds: TokenKinds | None,
        seed: int,
    ) -> None:
        super().__init__(model)
        self.structure = structure
        self.blocks = list(blocks)
        self.mode = mode
        self.sites = sites
        self.means = means
        self.kinds = kinds or TokenKinds()
        self.generator = torch.Generator().manual_seed(seed)
        self._pending: list[tuple[int, torch.Tensor, int, torch.Tensor | None]] = []
        self._counts = InterventionCounts()
        self._tables: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward_hooks(self):
        if self.mode == "original":
            return []
        return [(self.structure.blocks[b], self.hook_for(b)) for b in self.blocks]

    @property
    def counts(self) -> InterventionCounts:
        """The counts so far (read back from the device here, after the forward passes)."""
        for block, sites, sequences, without in self._pending:
            self._counts.add(block, int(sites), sequences)
            if without is not None:
                self._counts.without_mean += int(without)
        self._pending = []
        return self._counts

    def hook_for(self, block: int):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            hidden = output_tensor(output)
            flat = hidden.dim() == 2
            x = hidden.unsqueeze(0) if flat else hidden
            batch, tokens, _ = x.shape
            valid = self.valid_mask(batch, tokens, x.device)
            selected = self.sites.detect(x, valid)
            without = None
            if self.mode == "zero":
                new = x.masked_fill(selected, 0)
            elif self.mode == "mean":
                new, without = self._write_means(block, x, selected)
            else:
                new = x.clone()
                self._zero_random(new, selected, valid)
            self._pending.append((block, selected.sum(), batch, without))
            return replace_output_tensor(output, new.squeeze(0) if flat else new)

        return hook

    def _write_means(self, block: int, x: torch.Tensor, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` with each selected site set to its mean by (block, dim, token kind); sites without one are kept."""
        key = (block, x.device, x.dtype)
        if key not in self._tables:
            by_kind, pooled = self.means.tables(block)
            # in the hidden dtype: the values written are the same, the [batch, tokens, dims] lookup no larger
            self._tables[key] = (by_kind.to(x.device, x.dtype), pooled.to(x.device, x.dtype))
        by_kind, pooled = self._tables[key]
        batch, tokens, _ = x.shape
        codes = self.kinds.codes(self.input_ids, batch, tokens, x.device)
        values = by_kind[codes]  # [batch, tokens, dims]
        values = torch.where(values.isnan(), pooled.view(1, 1, -1), values)
        known = ~values.isnan()
        write = selected & known
        new = torch.where(write, values, x)
        return new, (selected & ~known).sum()

    def _zero_random(self, new: torch.Tensor, selected: torch.Tensor, valid: torch.Tensor | None) -> None:
        batch = new.shape[0]
        counts = selected.reshape(batch, -1).sum(1).tolist()  # the one read-back: how many to draw per sequence
        for index, count in enumerate(counts):
            if count == 0:
                continue
            ordinary = ~selected[index]
            if valid is not None:
                ordinary &= valid[index].unsqueeze(-1)
            candidates = ordinary.reshape(-1).nonzero().reshape(-1)
            pick = torch.randperm(candidates.numel(), generator=self.generator)[:count].to(candidates.device)
            flat = candidates[pick]
            new[index].view(-1)[flat] = 0


@contextmanager
def intervene(
    model: nn.Module,
    structure: Structure,
    sites: SiteSpec,
    mode: str,
    blocks: int | Sequence[int],
    *,
    means: SiteMeans | None = None,
    kinds: TokenKinds | None = None,
    seed: int = 0,
) -> Iterator[Intervention]:
    """Apply `mode` to the outputs of `blocks` while inside the block; the model is untouched after."""
    if mode not in MODES:
        raise MassactError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    blocks = [blocks] if isinstance(blocks, int) else list(blocks)
    for block in blocks:
        if not 0 <= block < len(structure):
            raise MassactError(f"--block {block} is out of range; the model has blocks 0..{len(structure) - 1}")
    if mode == "mean" and means is None:
        raise MassactError("mode 'mean' needs means: give --means FILE or --means-samples N")
    with Intervention(model, structure, blocks, mode, sites, means, kinds, seed) as intervention:
        yield intervention
