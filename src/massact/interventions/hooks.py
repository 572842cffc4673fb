"""Rewrite chosen (token, dim) sites of block outputs, inside a context manager.

`intervene(model, structure, sites, mode, blocks, ...)` hooks the outputs of `blocks`:

- ``zero``: the selected sites are set to 0;
- ``mean``: they are set to their mean over many sequences (`SiteMeans`), looked up by
  (block, dim, token kind);
- ``random``: the control: the same number of *other* (non-selected) entries of the same
  sequence, chosen at random with a seeded generator, are set to 0;
- ``original``: nothing is hooked.

Sites are selected per sequence and per block by `SiteSpec`: by default the detector (the
massive-activation criterion on this block's output of this sequence), optionally restricted to
given dims or token positions; with both dims and tokens given, exactly those sites.
The hooks only return a rewritten copy of the block output; they come off on exit, even on error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from massact.capture.hooks import forward_hooks, forward_pre_hook, output_tensor, replace_output_tensor
from massact.capture.stats import median_magnitude
from massact.detect import Thresholds, token_kind
from massact.errors import MassactError
from massact.models.structure import Structure

MODES = ("original", "zero", "mean", "random")
KINDS = ("first", "delimiter", "special", "other")


@dataclass(frozen=True)
class SiteSpec:
    """Which (token, dim) sites of a block output to rewrite."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    dims: tuple[int, ...] | None = None
    tokens: tuple[int, ...] | None = None

    @property
    def fixed(self) -> bool:
        """True when the user named both dims and tokens: no detection."""
        return self.dims is not None and self.tokens is not None

    def detect(self, hidden: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask [batch, tokens, dims] of the selected sites of `hidden` [batch, tokens, dims]."""
        batch, tokens, dims = hidden.shape
        device = hidden.device
        if self.fixed:
            mask = torch.zeros(batch, tokens, dims, dtype=torch.bool, device=device)
            rows = torch.tensor([t for t in self.tokens if t < tokens], dtype=torch.long, device=device)
            cols = torch.tensor(self.dims, dtype=torch.long, device=device)
            mask[:, rows.unsqueeze(1), cols.unsqueeze(0)] = True
        else:
            mags = hidden.detach().float().abs()
            mask = torch.zeros_like(mags, dtype=torch.bool)
            for b in range(batch):
                m = mags[b] if valid is None else mags[b][valid[b]]
                finite = torch.isfinite(m)
                median = median_magnitude(m if bool(finite.all()) else m[finite])
                if median != median:
                    continue
                hits = (m > self.thresholds.abs) & (m >= self.thresholds.cutoff(median))
                if valid is None:
                    mask[b] = hits
                else:
                    mask[b][valid[b]] = hits
            if self.dims is not None:
                keep = torch.zeros(dims, dtype=torch.bool, device=device)
                keep[list(self.dims)] = True
                mask &= keep.view(1, 1, dims)
            if self.tokens is not None:
                keep = torch.zeros(tokens, dtype=torch.bool, device=device)
                keep[[t for t in self.tokens if t < tokens]] = True
                mask &= keep.view(1, tokens, 1)
        if valid is not None:
            mask &= valid.unsqueeze(-1)
        return mask

    def check(self, hidden_size: int) -> None:
        """Refuse dims outside the model's hidden size, and negative token positions."""
        for dim in self.dims or ():
            if not 0 <= dim < hidden_size:
                raise MassactError(f"--dims {dim} is out of range; the model has dims 0..{hidden_size - 1}")
        for token in self.tokens or ():
            if token < 0:
                raise MassactError(f"--tokens {token}: token positions start at 0")


class TokenKinds:
    """Token kind ('first', 'delimiter', 'special', 'other') of every position of a batch of ids."""

    def __init__(self, table: torch.Tensor | None = None) -> None:
        self.table = table  # [vocab] kind code of a token id at a position > 0

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenKinds:
        if tokenizer is None:
            return cls()
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(size)])
        codes = [KINDS.index(token_kind(text, 1, i in special)) for i, text in enumerate(texts)]
        return cls(torch.tensor(codes, dtype=torch.long))

    def codes(self, input_ids: torch.Tensor | None, batch: int, tokens: int) -> torch.Tensor:
        """Kind codes [batch, tokens]; without ids (or a table) every position after the first is 'other'."""
        if input_ids is None or self.table is None or tuple(input_ids.shape) != (batch, tokens):
            codes = torch.full((batch, tokens), KINDS.index("other"), dtype=torch.long)
        else:
            ids = input_ids.detach().cpu().clamp(0, self.table.numel() - 1)
            codes = self.table[ids]
        codes[:, 0] = KINDS.index("first")
        return codes


@dataclass
class SiteMeans:
    """Mean value of each (block, dim, token kind) site over many sequences."""

    hidden_size: int
    num_blocks: int
    entries: dict[tuple[int, int, str], tuple[float, int]]  # -> (mean, count)
    model: str | None = None
    source: str = ""

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

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "hidden_size": self.hidden_size,
            "num_blocks": self.num_blocks,
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


class Intervention:
    """The hooks of one `intervene` call; `counts` says what they did."""

    def __init__(
        self,
        mode: str,
        sites: SiteSpec,
        means: SiteMeans | None,
        kinds: TokenKinds | None,
        seed: int,
    ) -> None:
        self.mode = mode
        self.sites = sites
        self.means = means
        self.kinds = kinds or TokenKinds()
        self.generator = torch.Generator().manual_seed(seed)
        self.counts = InterventionCounts()
        self._input_ids: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def grab_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        mask = kwargs.get("attention_mask")
        self._input_ids = ids if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _valid(self, batch: int, tokens: int, device: torch.device) -> torch.Tensor | None:
        mask = self._mask
        if mask is None or tuple(mask.shape) != (batch, tokens) or bool(mask.all()):
            return None
        return mask.to(device).bool()

    def hook_for(self, block: int):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            hidden = output_tensor(output)
            flat = hidden.dim() == 2
            x = hidden.unsqueeze(0) if flat else hidden
            batch, tokens, _ = x.shape
            valid = self._valid(batch, tokens, x.device)
            selected = self.sites.detect(x, valid)
            new = x.clone()
            if self.mode == "zero":
                new[selected] = 0
            elif self.mode == "mean":
                self._write_means(block, new, selected)
            elif self.mode == "random":
                self._zero_random(new, selected, valid)
            self.counts.add(block, int(selected.sum()), batch)
            return replace_output_tensor(output, new.squeeze(0) if flat else new)

        return hook

    def _write_means(self, block: int, new: torch.Tensor, selected: torch.Tensor) -> None:
        if block not in self._tables:
            self._tables[block] = self.means.tables(block)
        by_kind, pooled = self._tables[block]
        where = selected.nonzero()
        if where.numel() == 0:
            return
        b, t, d = where.unbind(1)
        codes = self.kinds.codes(self._input_ids, new.shape[0], new.shape[1])
        cpu_b, cpu_t, cpu_d = b.cpu(), t.cpu(), d.cpu()
        values = by_kind[codes[cpu_b, cpu_t], cpu_d]
        values = torch.where(values.isnan(), pooled[cpu_d], values)
        known = ~values.isnan()
        self.counts.without_mean += int((~known).sum())
        k = known.to(new.device)
        new[b[k], t[k], d[k]] = values[known].to(device=new.device, dtype=new.dtype)

    def _zero_random(self, new: torch.Tensor, selected: torch.Tensor, valid: torch.Tensor | None) -> None:
        batch, tokens, dims = new.shape
        for index in range(batch):
            count = int(selected[index].sum())
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
    intervention = Intervention(mode, sites, means, kinds, seed)
    with ExitStack() as stack:
        if mode != "original":
            stack.enter_context(forward_pre_hook(model, intervention.grab_inputs))
            stack.enter_context(forward_hooks((structure.blocks[b], intervention.hook_for(b)) for b in blocks))
        yield intervention
