"""Rewrite chosen (token, dim) sites of block outputs, inside a context manager.

`intervene(model, structure, sites, mode, blocks, ...)` hooks the outputs of `blocks`:

- ``zero``: the selected sites are set to 0;
- ``mean``: they are set to their mean over many sequences (`SiteMeans`), looked up by
  (block, dim, token kind);
- ``random``: the control: the same number of *other* (non-selected) entries of the same
  sequence, chosen at random, are set to 0; each hooked block draws from its own generator, seeded from
  (seed, block), so the draws do not depend on the order blocks run in (in memory, or block by block);
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

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from massact.capture.hooks import HookSet, output_tensor, replace_output_tensor
from massact.defaults import MODES as MODES
from massact.errors import MassactError
from massact.interventions.means import SiteMeans
from massact.interventions.sites import SiteSpec
from massact.models.structure import Structure
from massact.tokens import TokenKinds


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
    Nothing here is one pass's state (`HookSet.per_forward`): counts add up, and each block's generator
    is consumed in batch order whether the model runs in memory or block by block.
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
        self.generators = {block: block_generator(seed, block) for block in self.blocks}
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
                self._zero_random(new, selected, valid, self.generators[block])
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

    @staticmethod
    def _zero_random(
        new: torch.Tensor, selected: torch.Tensor, valid: torch.Tensor | None, generator: torch.Generator
    ) -> None:
        batch = new.shape[0]
        counts = selected.reshape(batch, -1).sum(1).tolist()  # the one read-back: how many to draw per sequence
        for index, count in enumerate(counts):
            if count == 0:
                continue
            ordinary = ~selected[index]
            if valid is not None:
                ordinary &= valid[index].unsqueeze(-1)
            candidates = ordinary.reshape(-1).nonzero().reshape(-1)
            pick = torch.randperm(candidates.numel(), generator=generator)[:count].to(candidates.device)
            flat = candidates[pick]
            new[index].view(-1)[flat] = 0


def block_generator(seed: int, block: int) -> torch.Generator:
    """The random control's generator for `block`: seeded from (seed, block), the same whatever runs first."""
    digest = hashlib.sha256(f"massact-random-control:{seed}:{block}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


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
            raise MassactError(f"block {block} is out of range; the model has blocks 0..{len(structure) - 1}")
    if mode == "mean" and means is None:
        raise MassactError("mode 'mean' needs `means` (`read_means(path)` reads a corpus scan's)")
    with Intervention(model, structure, blocks, mode, sites, means, kinds, seed) as intervention:
        yield intervention
