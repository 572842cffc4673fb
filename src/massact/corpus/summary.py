"""`CorpusSummary`: corpus-wide statistics that merge exactly.

Kept per sequence (so merging is concatenation): the top-1/2/3 magnitudes, the median and the
number of massive entries of every block. Kept per massive site (block, dim, token kind): the
number of occurrences, sum and sum of squares of the signed value, min, max, the sequences it
occurs in, the token strings that carry it, and its value per sequence (first `PER_SEQUENCE_CAP`
sequences) for the constancy figure. Kept per block: the corpus-wide top-k activations.
Sequences are identified by (source, window): merging the same sequence twice is refused.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from massact.capture.stats import SequenceRecord
from massact.detect import FEATURE, MASSIVE, Thresholds
from massact.errors import MassactError
from massact.outputs import write_json

SUMMARY_JSON = "summary.json"
SUMMARY_ARRAYS = "summary.safetensors"
MEANS_JSON = "means.json"
FORMAT = "massact-corpus-summary/1"
PER_SEQUENCE_CAP = 4096
TOP_RANKS = 3


@dataclass
class SiteStats:
    """One massive site (block, dim, token kind) over the corpus."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    sequences: int = 0
    tokens: Counter = field(default_factory=Counter)
    per_sequence: dict[int, float] = field(default_factory=dict)  # sequence row -> largest-|x| value

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def std(self) -> float:
        return math.sqrt(max(self.total_sq / self.count - self.mean**2, 0.0))

    @property
    def cv(self) -> float:
        """Coefficient of variation, std / |mean|."""
        return self.std / abs(self.mean) if self.mean else math.inf

    def merge(self, other: SiteStats, row_offset: int = 0) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.sequences += other.sequences
        self.tokens.update(other.tokens)
        self.per_sequence.update({k + row_offset: v for k, v in other.per_sequence.items()})


SiteKey = tuple[int, int, str]  # (block, dim, token kind)
TopEntry = tuple[float, int, int, int]  # (signed value, sequence row, token position, dim)


@dataclass
class CorpusSummary:
    """Everything a corpus scan measured; `merge` of two disjoint runs equals one run over both."""

    model: str
    hidden_size: int
    num_blocks: int
    thresholds: Thresholds
    top_k: int
    seq_len: int
    sources: list[str] = field(default_factory=list)
    seq_ids: list[tuple[int, int]] = field(default_factory=list)  # (source index, window index) per row
    top3: list[np.ndarray] = field(default_factory=list)  # per row: [blocks, 3] magnitudes
    medians: list[np.ndarray] = field(default_factory=list)  # per row: [blocks]
    massive_counts: list[np.ndarray] = field(default_factory=list)  # per row: [blocks]
    nonfinite: int = 0
    truncated_blocks: int = 0
    sites: dict[SiteKey, SiteStats] = field(default_factory=dict)
    top: list[list[TopEntry]] = field(default_factory=list)  # per block, largest |x| first
    prefix_tokens: list[str] = field(default_factory=list)  # what every window starts with (the BOS), [] if none

    def __post_init__(self) -> None:
        if not self.top:
            self.top = [[] for _ in range(self.num_blocks)]

    @property
    def num_sequences(self) -> int:
        return len(self.seq_ids)

    # -- adding sequences ------------------------------------------------------------------------
    def add(self, record: SequenceRecord, source: str, window: int, tokens: list[str], kinds: list[str]) -> None:
        """Add one sequence; `tokens`/`kinds` are indexed by position."""
        if source not in self.sources:
            self.sources.append(source)
        seq_id = (self.sources.index(source), int(window))
        row = len(self.seq_ids)
        self.seq_ids.append(seq_id)
        top3 = np.full((self.num_blocks, TOP_RANKS), np.nan)
        medians = np.empty(self.num_blocks)
        counts = np.zeros(self.num_blocks, dtype=np.int64)
        for block, rec in enumerate(record.blocks):
            mags = rec.top_values.abs().double().numpy()[:TOP_RANKS]
            top3[block, : mags.size] = mags
            medians[block] = rec.median
            counts[block] = rec.massive_values.numel()
            self.nonfinite += rec.nonfinite
            self.truncated_blocks += int(rec.massive_truncated)
            entries = zip(rec.top_values.tolist(), rec.top_tokens.tolist(), rec.top_dims.tolist(), strict=True)
            self.top[block].extend((v, row, t, d) for v, t, d in entries)
            seen: dict[SiteKey, float] = {}
            for t, d, v in zip(
                rec.massive_tokens.tolist(), rec.massive_dims.tolist(), rec.massive_values.tolist(), strict=True
            ):
                key = (block, d, kinds[t])
                site = self.sites.setdefault(key, SiteStats())
                site.count += 1
                site.total += v
                site.total_sq += v * v
                site.low, site.high = min(site.low, v), max(site.high, v)
                site.tokens[tokens[t]] += 1
                if key not in seen or abs(v) > abs(seen[key]):
                    seen[key] = v
            for key, v in seen.items():
                self.sites[key].sequences += 1
                self.sites[key].per_sequence[row] = v
            self.top[block] = sorted(self.top[block], key=self._top_order(self.seq_ids))[: self.top_k]
        self.top3.append(top3)
        self.medians.append(medians)
        self.massive_counts.append(counts)

    @staticmethod
    def _top_order(seq_ids: list[tuple[int, int]]):
        return lambda e: (-abs(e[0]), seq_ids[e[1]], e[2], e[3])

    # -- merging ---------------------------------------------------------------------------------
    def _check_compatible(self, other: CorpusSummary) -> None:
        fields = ("model", "hidden_size", "num_blocks", "thresholds", "top_k", "seq_len", "prefix_tokens")
        for name in fields:
            if getattr(self, name) != getattr(other, name):
                raise MassactError(
                    f"cannot merge runs with different {name} ({getattr(self, name)!r} vs {getattr(other, name)!r})"
                )

    def merge(self, other: CorpusSummary) -> CorpusSummary:
        """A new summary of both runs, in canonical order (identical however the sequences were split)."""
        self._check_compatible(other)
        sources = list(self.sources) + [s for s in other.sources if s not in self.sources]
        ids = list(self.seq_ids) + [(sources.index(other.sources[s]), w) for s, w in other.seq_ids]
        if len(set(ids)) != len(ids):
            raise MassactError("the runs share sequences (same corpus windows); merging would count them twice")
        merged = CorpusSummary(
            self.model, self.hidden_size, self.num_blocks, self.thresholds, self.top_k, self.seq_len, sources,
            prefix_tokens=list(self.prefix_tokens),
        )  # fmt: skip
        merged.seq_ids = ids
        merged.top3 = self.top3 + other.top3
        merged.medians = self.medians + other.medians
        merged.massive_counts = self.massive_counts + other.massive_counts
        merged.nonfinite = self.nonfinite + other.nonfinite
        merged.truncated_blocks = self.truncated_blocks + other.truncated_blocks
        offset = self.num_sequences
        for key, site in self.sites.items():
            merged.sites.setdefault(key, SiteStats()).merge(site)
        for key, site in other.sites.items():
            merged.sites.setdefault(key, SiteStats()).merge(site, offset)
        order = merged._top_order(ids)
        for block in range(self.num_blocks):
            entries = self.top[block] + [(v, r + offset, t, d) for v, r, t, d in other.top[block]]
            merged.top[block] = sorted(entries, key=order)[: self.top_k]
        return merged.canonical()

    def canonical(self) -> CorpusSummary:
        """Rows sorted by (source name, window); per-sequence values capped at `PER_SEQUENCE_CAP` rows."""
        rank = sorted(range(self.num_sequences), key=lambda r: (self.sources[self.seq_ids[r][0]], self.seq_ids[r][1]))
        sources = sorted(self.sources)
        new_row = {old: new for new, old in enumerate(rank)}
        out = CorpusSummary(
            self.model, self.hidden_size, self.num_blocks, self.thresholds, self.top_k, self.seq_len, sources,
            prefix_tokens=list(self.prefix_tokens),
        )  # fmt: skip
        out.seq_ids = [(sources.index(self.sources[self.seq_ids[r][0]]), self.seq_ids[r][1]) for r in rank]
        out.top3 = [self.top3[r] for r in rank]
        out.medians = [self.medians[r] for r in rank]
        out.massive_counts = [self.massive_counts[r] for r in rank]
        out.nonfinite, out.truncated_blocks = self.nonfinite, self.truncated_blocks
        for key in sorted(self.sites):
            site = self.sites[key]
            per_sequence = {new_row[r]: v for r, v in site.per_sequence.items() if new_row[r] < PER_SEQUENCE_CAP}
            out.sites[key] = SiteStats(
                site.count, site.total, site.total_sq, site.low, site.high, site.sequences,
                Counter(dict(sorted(site.tokens.items(), key=lambda kv: (-kv[1], kv[0])))),
                dict(sorted(per_sequence.items())),
            )  # fmt: skip
        out.top = [[(v, new_row[r], t, d) for v, r, t, d in block] for block in self.top]
        return out

    # -- derived statistics ----------------------------------------------------------------------
    def features(self) -> dict[int, float]:
        """The outlier features: dim -> the largest share, over blocks, of all scanned tokens it passes the
        criterion on, for the dims where that share makes it one (`Thresholds.is_feature`)."""
        hits: dict[tuple[int, int], int] = {}
        for (block, dim, _), site in self.sites.items():
            hits[(block, dim)] = hits.get((block, dim), 0) + site.count
        tokens = self.num_sequences * self.seq_len
        most: dict[int, int] = {}
        for (_, dim), count in hits.items():
            most[dim] = max(most.get(dim, 0), count)
        return {d: c / tokens for d, c in sorted(most.items()) if self.thresholds.is_feature(c, tokens)}

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-sequence arrays: top3 [S, B, 3], medians [S, B], massive_counts [S, B], seq_ids [S, 2]."""
        b = self.num_blocks
        return {
            "top3": np.stack(self.top3) if self.top3 else np.zeros((0, b, TOP_RANKS)),
            "medians": np.stack(self.medians) if self.medians else np.zeros((0, b)),
            "massive_counts": np.stack(self.massive_counts) if self.massive_counts else np.zeros((0, b), np.int64),
            "seq_ids": np.asarray(self.seq_ids, dtype=np.int64).reshape(-1, 2),
        }

    def layerwise(self) -> dict[str, dict[str, list[float]]]:
        """Per block, over sequences: mean and std of the top-1/2/3 magnitudes and of the median."""
        a = self.arrays()
        series = {f"top {k + 1}": a["top3"][:, :, k] for k in range(TOP_RANKS)} | {"median": a["medians"]}
        with (
            warnings.catch_warnings()
        ):  # a block with nothing finite (a float16 overflow) has NaN bands, said elsewhere
            warnings.simplefilter("ignore", RuntimeWarning)
            return {
                name: {"mean": np.nanmean(v, 0).tolist(), "std": np.nanstd(v, 0).tolist()} for name, v in series.items()
            }

    def site_rows(self) -> list[dict]:
        """One row per (block, dim, token kind), by block then largest mean magnitude."""
        rows = []
        features = self.features()
        for (block, dim, kind), s in self.sites.items():
            rows.append(
                {
                    "block": block,
                    "dim": dim,
                    "token_kind": kind,
                    "kind": FEATURE if dim in features else MASSIVE,
                    "count": s.count,
                    "sequences": s.sequences,
                    "frequency": s.sequences / self.num_sequences if self.num_sequences else 0.0,
                    "mean": s.mean,
                    "std": s.std,
                    "cv": s.cv,
                    "min": s.low,
                    "max": s.high,
                    "tokens": [{"token": t, "count": c} for t, c in s.tokens.most_common(10)],
                }
            )
        return sorted(rows, key=lambda r: (r["block"], -abs(r["mean"]), r["dim"], r["token_kind"]))

    def groups(self, min_frequency: float = 0.5) -> list[dict]:
        """Massive (dim, token kind) pairs across blocks: where they emerge, peak and fade.

        A pair is present in a block when it occurs in at least `min_frequency` of the sequences.
        `fade_block` is the first block after the peak whose mean |value| is below half the peak.
        """
        by_pair: dict[tuple[int, str], dict[int, SiteStats]] = {}
        features = self.features()
        for (block, dim, kind), s in self.sites.items():
            by_pair.setdefault((dim, kind), {})[block] = s
        out = []
        n = max(self.num_sequences, 1)
        for (dim, kind), blocks in by_pair.items():
            present = sorted(b for b, s in blocks.items() if s.sequences / n >= min_frequency)
            if not present:
                continue
            peak = max(present, key=lambda b: abs(blocks[b].mean))
            half = abs(blocks[peak].mean) / 2
            fade = next(
                (b for b in range(peak + 1, self.num_blocks) if b not in blocks or abs(blocks[b].mean) < half), None
            )
            first = blocks[present[0]]
            out.append(
                {
                    "dim": dim,
                    "token_kind": kind,
                    "kind": FEATURE if dim in features else MASSIVE,
                    "emerge_block": present[0],
                    "last_block": present[-1],
                    "peak_block": peak,
                    "fade_block": fade,
                    "num_blocks": len(present),
                    "peak_mean": blocks[peak].mean,
                    "peak_cv": blocks[peak].cv,
                    "emerge_mean": first.mean,
                    "emerge_cv": first.cv,
                    "frequency": blocks[peak].sequences / n,
                    "tokens": [t for t, _ in blocks[peak].tokens.most_common(5)],
                }
            )
        return sorted(out, key=lambda g: -abs(g["peak_mean"]))

    def means(self) -> dict:
        """What an intervention loads (`--means FILE`): mean signed value of every massive site."""
        sites = [
            {k: r[k] for k in ("block", "dim", "token_kind", "mean", "std", "count", "sequences")}
            for r in self.site_rows()
        ]
        return {
            "model": self.model,
            "hidden_size": self.hidden_size,
            "num_blocks": self.num_blocks,
            "num_sequences": self.num_sequences,
            "seq_len": self.seq_len,
            "prefix_tokens": self.prefix_tokens,
            "sources": self.sources,
            "windows": self.windows(),
            "sites": sites,
        }

    def windows(self) -> dict[str, list[int]]:
        """The windows scanned: source name -> sorted stream indices (how `intervene` detects overlap)."""
        out: dict[str, list[int]] = {name: [] for name in self.sources}
        for source, window in self.seq_ids:
            out[self.sources[source]].append(int(window))
        return {name: sorted(ids) for name, ids in out.items()}

    # -- files -----------------------------------------------------------------------------------
    def state(self) -> dict:
        """The exact, mergeable state as JSON (per-sequence arrays go to safetensors)."""
        return {
            "format": FORMAT,
            "model": self.model,
            "hidden_size": self.hidden_size,
            "num_blocks": self.num_blocks,
            "thresholds": self.thresholds.to_json(),
            "top_k": self.top_k,
            "seq_len": self.seq_len,
            "prefix_tokens": self.prefix_tokens,
            "sources": self.sources,
            "num_sequences": self.num_sequences,
            "nonfinite": self.nonfinite,
            "truncated_blocks": self.truncated_blocks,
            "sites": [
                {
                    "block": b,
                    "dim": d,
                    "token_kind": k,
                    "count": s.count,
                    "sum": s.total,
                    "sum_sq": s.total_sq,
                    "min": s.low,
                    "max": s.high,
                    "sequences": s.sequences,
                    "tokens": dict(s.tokens),
                    "per_sequence": [[r, v] for r, v in s.per_sequence.items()],
                }
                for (b, d, k), s in self.sites.items()
            ],  # fmt: skip
            "top": [[list(e) for e in block] for block in self.top],
        }

    def save(self, folder: Path) -> None:
        """Write summary.json + summary.safetensors into `folder`."""
        write_json(folder / SUMMARY_JSON, self.state())
        save_file(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.arrays().items()}, folder / SUMMARY_ARRAYS
        )

    @classmethod
    def load(cls, path: Path) -> CorpusSummary:
        """Read a run folder written by `save` (or its summary.json); the path must exist and hold one."""
        path = Path(path).expanduser()
        if not path.exists():
            raise MassactError(f"{path}: no such file or folder; give the folder a corpus scan was written to")
        if path.is_dir():
            folder = path
        elif path.name == SUMMARY_JSON:
            folder = path.parent
        else:
            raise MassactError(f"{path}: not a corpus scan folder; give the folder a corpus scan was written to")
        if not (folder / SUMMARY_JSON).is_file() or not (folder / SUMMARY_ARRAYS).is_file():
            raise MassactError(
                f"{path}: holds no {SUMMARY_JSON} and {SUMMARY_ARRAYS}; give the folder a corpus scan was written to"
            )
        try:
            state = json.loads((folder / SUMMARY_JSON).read_text(encoding="utf-8"))
            arrays = load_file(folder / SUMMARY_ARRAYS)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MassactError(
                f"{path}: cannot read its summary ({reason}); give the folder a corpus scan was written to"
            ) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise MassactError(f"{path}: {SUMMARY_JSON} is not a massact corpus summary")
        out = cls(
            state["model"], state["hidden_size"], state["num_blocks"], Thresholds.from_json(state["thresholds"]),
            state["top_k"], state["seq_len"], list(state["sources"]),
            prefix_tokens=list(state.get("prefix_tokens", [])),
        )  # fmt: skip
        out.seq_ids = [tuple(r) for r in arrays["seq_ids"].tolist()]
        out.top3 = list(arrays["top3"].numpy())
        out.medians = list(arrays["medians"].numpy())
        out.massive_counts = list(arrays["massive_counts"].numpy())
        out.nonfinite, out.truncated_blocks = state["nonfinite"], state["truncated_blocks"]
        for s in state["sites"]:
            out.sites[(s["block"], s["dim"], s["token_kind"])] = SiteStats(
                s["count"], s["sum"], s["sum_sq"], _num(s["min"]), _num(s["max"]), s["sequences"],
                Counter(s["tokens"]), {int(r): v for r, v in s["per_sequence"]},
            )  # fmt: skip
        out.top = [[(v, int(r), int(t), int(d)) for v, r, t, d in block] for block in state["top"]]
        return out


def _num(value) -> float:
    return float(value)  # JSON holds inf as the string "inf"
