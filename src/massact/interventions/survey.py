"""Where a model's massive activations live, and their means, from massact's own block capture.

One pass of `capture_block_stats` over held-out windows gives, per block, which dims are massive on
how many sequences (the block map a user reads to choose `--block`), the block where the largest of
them first appears on most sequences (the default block), the largest sub-threshold spike per block,
and the mean value of every selected (block, dim, token kind) site for the `mean` intervention.
Outlier features (dims that pass the criterion on most tokens of a sequence in a block,
`Thresholds.feature_share`: the ones the detecting hooks leave out there) are listed apart and left out of
all of these: they mark no token.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from massact.capture.forward import walk_windows
from massact.capture.stats import capture_block_stats
from massact.detect import feature_dims
from massact.interventions.means import SiteMeans
from massact.interventions.sites import SiteSpec
from massact.models.structure import Structure
from massact.tokens import KINDS, TokenKinds


@dataclass
class Survey:
    """The massive activations seen on `sequences` held-out windows."""

    sequences: int
    num_blocks: int
    hidden_size: int
    blocks: list[dict]  # one entry per block: massive dims, top spike
    means: SiteMeans
    majority: float = 0.5
    features: dict[int, float] = field(default_factory=dict)  # outlier features: dim -> largest token share

    def dims_at(self, block: int) -> list[int]:
        """Dims massive at `block` on at least `majority` of the sequences."""
        return [d["dim"] for d in self.blocks[block]["massive_dims"] if d["fraction"] >= self.majority]

    @property
    def first_block(self) -> int | None:
        """First block with a massive activation on at least `majority` of the sequences."""
        return next((b for b in range(self.num_blocks) if self.dims_at(b)), None)

    @property
    def main_block(self) -> int | None:
        """The first block (on at least `majority` of the sequences) of the dim with the largest peak."""
        spans = self.dim_spans()
        if not spans:
            return None
        peaks: dict[int, float] = {}
        for block in self.blocks:
            for d in block["massive_dims"]:
                if d["fraction"] >= self.majority:
                    peaks[d["dim"]] = max(peaks.get(d["dim"], 0.0), d["peak"])
        return max(spans, key=lambda row: peaks[row["dim"]])["blocks"][0]

    def dim_spans(self) -> list[dict]:
        """For each massive dim: the blocks where it is massive (majority), and where it is only a spike."""
        dims: dict[int, list[int]] = defaultdict(list)
        for block in range(self.num_blocks):
            for dim in self.dims_at(block):
                dims[dim].append(block)
        rows = []
        for dim, blocks in sorted(dims.items(), key=lambda item: item[1][0]):
            spikes = [
                b["block"]
                for b in self.blocks
                if b["top_dim"] == dim and b["block"] not in blocks and (b["top_ratio"] or 0) >= 100
            ]
            ratios = [self.blocks[b]["top_ratio"] for b in spikes]
            rows.append(
                {
                    "dim": dim,
                    "blocks": blocks,
                    "below_criterion_blocks": spikes,
                    "below_criterion_max_ratio": max(ratios) if ratios else None,
                }
            )
        return rows

    def to_json(self) -> dict:
        return {
            "sequences": self.sequences,
            "first_block": self.first_block,
            "main_block": self.main_block,
            "majority": self.majority,
            "outlier_features": [{"dim": d, "token_share": v} for d, v in self.features.items()],
            "dims": self.dim_spans(),
            "blocks": self.blocks,
        }


@dataclass
class _BlockTally:
    dims: Counter = field(default_factory=Counter)  # dim -> sequences where massive
    kinds: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    peak: dict[int, float] = field(default_factory=dict)
    top_dims: list[int] = field(default_factory=list)
    top_values: list[float] = field(default_factory=list)
    top_ratios: list[float] = field(default_factory=list)


def survey(
    model: nn.Module,
    structure: Structure,
    windows: torch.Tensor,
    sites: SiteSpec,
    kinds: TokenKinds,
    *,
    batch_size: int = 8,
    progress: bool = True,
    model_name: str | None = None,
) -> Survey:
    """Run `windows` [N, L] through the model once, with every block summarised by the capture.

    Each batch's records are read in `consume`, after its pass (block by block: after the last block).
    """
    tallies = [_BlockTally() for _ in structure.blocks]
    sums: dict[tuple[int, int, str], float] = defaultdict(float)
    counts: Counter = Counter()
    keep = range(len(structure)) if sites.fixed else ()
    hidden_size = 0
    features: dict[int, float] = {}

    def consume(start: int, input_ids: torch.Tensor, output: object) -> None:
        nonlocal hidden_size
        batch = windows[start : start + input_ids.shape[0]]
        codes = kinds.codes(batch, *batch.shape)
        for row, record in enumerate(collector.pop()):
            hidden_size = int(record.blocks[0].dim_max.numel())
            for block, summary in enumerate(record.blocks):
                massive = summary.massive_dims.tolist()
                found = feature_dims([massive], len(record.positions), sites.thresholds)  # as the hooks see it
                for dim, share in found.items():
                    features[dim] = max(features.get(dim, 0.0), share)
                skip = set(found) if sites.dims is None else set()  # named dims are taken as they are
                tally = tallies[block]
                top = float(summary.top_values[0])
                tally.top_dims.append(int(summary.top_dims[0]))
                tally.top_values.append(abs(top))
                tally.top_ratios.append(abs(top) / summary.median if summary.median > 0 else float("inf"))
                for t, d, v in _selected(summary, record.kept.get(block), sites, skip):
                    kind = KINDS[int(codes[row, t])]
                    sums[(block, d, kind)] += v
                    counts[(block, d, kind)] += 1
                for dim in set(massive) - set(found):
                    tally.dims[dim] += 1
                for t, d, v in zip(
                    summary.massive_tokens.tolist(), massive, summary.massive_values.tolist(), strict=True
                ):
                    if d in found:
                        continue
                    tally.kinds[d][KINDS[int(codes[row, t])]] += 1
                    tally.peak[d] = max(tally.peak.get(d, 0.0), abs(v))

    with capture_block_stats(model, structure, top_k=1, thresholds=sites.thresholds, keep=keep) as collector:
        walk_windows(model, windows, batch_size, consume, description="survey", progress=progress)
    sequences = windows.shape[0]
    blocks = [_block_json(b, tally, sequences) for b, tally in enumerate(tallies)]
    entries = {key: (sums[key] / counts[key], counts[key]) for key in counts}
    means = SiteMeans(hidden_size, len(structure), entries, model=model_name, source="the computed means")
    return Survey(
        sequences=sequences, num_blocks=len(structure), hidden_size=hidden_size, blocks=blocks, means=means,
        features=dict(sorted(features.items())),
    )  # fmt: skip


def _selected(summary, kept: torch.Tensor | None, sites: SiteSpec, features: set[int]) -> list[tuple[int, int, float]]:
    """(token, dim, value) of the sites `sites` selects in one block of one sequence (not `features`' dims)."""
    if sites.fixed:
        if kept is None:
            return []
        return [(t, d, float(kept[t, d])) for t in sites.tokens if t < kept.shape[0] for d in sites.dims]
    rows = zip(
        summary.massive_tokens.tolist(), summary.massive_dims.tolist(), summary.massive_values.tolist(), strict=True
    )
    return [
        (t, d, v)
        for t, d, v in rows
        if d not in features and (sites.dims is None or d in sites.dims) and (sites.tokens is None or t in sites.tokens)
    ]


def _block_json(block: int, tally: _BlockTally, sequences: int) -> dict:
    dims = [
        {
            "dim": dim,
            "fraction": n / sequences,
            "peak": tally.peak[dim],
            "token_kinds": dict(tally.kinds[dim].most_common()),
        }
        for dim, n in tally.dims.most_common()
    ]
    top_dim = Counter(tally.top_dims).most_common(1)[0][0] if tally.top_dims else None
    return {
        "block": block,
        "massive_dims": dims,
        "top_dim": top_dim,
        "top_value": statistics.median(tally.top_values) if tally.top_values else None,
        "top_ratio": statistics.median(tally.top_ratios) if tally.top_ratios else None,
    }
