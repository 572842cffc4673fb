"""Detecting massive-activation tokens as they arrive in a token-by-token stream.

Each decoding step feeds one token; a hook on every block output reads that token's hidden state
and keeps a few small numbers per block on the device (its `TOP` largest |x| with their dims, and the
token's median |x|). A token is massive when, in some block, one of them passes `Thresholds.massive`
against the block's median: the median over the tokens seen so far of their per-token medians (a
streaming stand-in for the median over the whole sequence, which a stream never has in full), in a dim
that is not an outlier feature (one that passes on most of the tokens seen so far in that block,
`Thresholds.is_feature`: large on every token, it marks none). A token is judged a few steps after it
arrived (`delay`), so that the first token has other tokens to be compared with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from massact.capture.hooks import HookFn, HookSet, output_tensor
from massact.detect import Thresholds
from massact.models.structure import Structure

TOP = 4  # largest entries kept per token and block, so that a massive dim shows under an outlier feature


@dataclass
class ArrivedToken:
    """A token found massive when it arrived: where, and the block / dim / value that made it so."""

    position: int
    block: int
    dim: int
    value: float
    median: float
    blocks: list[int]

    def to_json(self) -> dict:
        return {
            "position": self.position,
            "block": self.block,
            "dim": self.dim,
            "value": self.value,
            "median": self.median,
            "massive_blocks": self.blocks,
        }


class ArrivalDetector(HookSet):
    """Hooks on every block; `record()` after each one-token forward, `judge(position)` once enough followed."""

    def __init__(self, model, structure: Structure, thresholds: Thresholds) -> None:
        super().__init__(model)
        self.structure = structure
        self.thresholds = thresholds
        self._step: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(structure.blocks)
        self._medians: list[torch.Tensor] = []  # per token: [blocks] medians
        self._tops: list[tuple[torch.Tensor, torch.Tensor]] = []  # per token: [blocks, TOP] largest |x|, their dims
        self._stacked: tuple[torch.Tensor, torch.Tensor] | None = None  # the first tokens' `_tops`, stacked

    def forward_hooks(self) -> Iterable[tuple[torch.nn.Module, HookFn]]:
        return [(block, self._hook(index)) for index, block in enumerate(self.structure.blocks)]

    def _hook(self, index: int) -> HookFn:
        def hook(module, args, output) -> None:
            mags = output_tensor(output)[0, -1].detach().float().abs()
            top, dim = mags.topk(min(TOP, mags.numel()))
            self._step[index] = (top, dim, mags.median())

        return hook

    def record(self) -> None:
        """Keep the last forward's token summary (on its device)."""
        if any(item is None for item in self._step):
            raise RuntimeError("a block did not run in the last forward")
        top, dim, median = (torch.stack(parts) for parts in zip(*self._step))
        self._step = [None] * len(self._step)
        self._medians.append(median)
        self._tops.append((top, dim))

    def _all_tops(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's largest |x| and dims so far, stacked (only the tokens new since the last call)."""
        done = 0 if self._stacked is None else self._stacked[0].shape[0]
        new = self._tops[done:]
        if new:
            parts = [torch.stack([t for t, _ in new]), torch.stack([d for _, d in new])]
            if self._stacked is not None:
                parts = [torch.cat([old, part]) for old, part in zip(self._stacked, parts, strict=True)]
            self._stacked = (parts[0], parts[1])
        return self._stacked

    def judge(self, position: int) -> ArrivedToken | None:
        """Whether stream token `position` was massive, against the medians of every token so far (one host sync)."""
        reference = torch.stack(self._medians).median(0).values  # [blocks]
        tops, dims = self._all_tops()  # [tokens, blocks, TOP]
        hits = self.thresholds.massive(tops, reference[None, :, None])
        blocks = tops.shape[1]
        keys = dims * blocks + torch.arange(blocks, device=dims.device)[None, :, None]  # one per (dim, block)
        counts = torch.bincount(keys[hits], minlength=int(keys.max()) + 1)
        feature = self.thresholds.is_feature(counts[keys[position]], tops.shape[0])
        massive = hits[position] & ~feature  # [blocks, TOP]
        if not bool(massive.any()):
            return None
        top = torch.where(massive, tops[position], -1.0)
        best = int(top.amax(1).argmax())
        rank = int(top[best].argmax())
        return ArrivedToken(
            position=position,
            block=best,
            dim=int(dims[position, best, rank]),
            value=float(tops[position, best, rank]),
            median=float(reference[best]),
            blocks=massive.any(1).nonzero().flatten().tolist(),
        )
