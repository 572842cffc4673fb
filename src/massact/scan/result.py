"""What a scan found: every flagged entry, per-site summaries, and the result with its three views."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from massact.capture.stats import BlockRecord
from massact.detect import FEATURE, MASSIVE, Thresholds, dim_hits
from massact.html.registry import result_kind
from massact.html.views.scan import scan_charts
from massact.models.structure import Structure
from massact.precision import Precision
from massact.scan import views

KIND = "scan"  # the `kind` field of the JSON: which result this is


@dataclass
class MassiveActivation:
    """One entry of one block output that passes the criterion."""

    block: int
    token: int
    token_text: str
    dim: int
    value: float
    ratio: float
    kind: str

    def to_json(self) -> dict:
        return {
            "block": self.block,
            "token": self.token,
            "token_text": self.token_text,
            "token_kind": self.kind,
            "dim": self.dim,
            "value": self.value,
            "magnitude": abs(self.value),
            "ratio": self.ratio,
        }


def find_massive(records: list[BlockRecord], tokens: list[str], kinds: list[str]) -> list[MassiveActivation]:
    """Every entry the capture flagged, by block, largest magnitude first."""
    found = []
    for block, record in enumerate(records):
        entries = zip(record.massive_tokens.tolist(), record.massive_dims.tolist(), record.massive_values.tolist())
        rows = [
            MassiveActivation(
                block=block,
                token=t,
                token_text=tokens[t] if t < len(tokens) else "",
                dim=d,
                value=v,
                ratio=abs(v) / record.median if record.median > 0 else math.inf,
                kind=kinds[t] if t < len(kinds) else "other",
            )
            for t, d, v in entries
        ]
        found.extend(sorted(rows, key=lambda m: -abs(m.value)))
    return found


def summarize_massive(
    massive: list[MassiveActivation], tokens: list[str], kinds: list[str], thresholds: Thresholds | None = None
) -> dict:
    """Dims, tokens, first/last block and one line per (token, dim) site of the massive activations (dims on a
    few tokens), and one line per outlier feature (a dim that passes on most tokens, `Thresholds.feature_share`)."""
    thresholds = thresholds or Thresholds()
    per_block: dict[int, list[int]] = {}
    for m in massive:
        per_block.setdefault(m.block, []).append(m.dim)
    hits = dim_hits(per_block.values())
    features = {d for d, count in hits.items() if thresholds.is_feature(count, len(tokens))}
    share = {d: count / len(tokens) for d, count in hits.items()}
    few = [m for m in massive if m.dim not in features]
    feature_rows = []
    for dim in features:
        rows = [m for m in massive if m.dim == dim]
        peak = max(rows, key=lambda m: abs(m.value))
        feature_rows.append(
            {
                "dim": dim,
                "kind": FEATURE,
                "token_share": share[dim],
                "num_tokens": hits[dim],
                "first_block": min(m.block for m in rows),
                "last_block": max(m.block for m in rows),
                "peak_block": peak.block,
                "peak_value": peak.value,
                "peak_token": peak.token,
            }
        )
    feature_rows.sort(key=lambda f: -abs(f["peak_value"]))
    if not few:
        empty = {"dims": [], "tokens": [], "first_block": None, "last_block": None, "sites": []}
        return empty | {"features": feature_rows}
    sites: dict[tuple[int, int], list[MassiveActivation]] = {}
    for m in few:
        sites.setdefault((m.token, m.dim), []).append(m)
    site_rows = []
    for (token, dim), rows in sites.items():
        peak = max(rows, key=lambda m: abs(m.value))
        site_rows.append(
            {
                "token": token,
                "token_text": tokens[token],
                "token_kind": kinds[token],
                "dim": dim,
                "kind": MASSIVE,
                "token_share": share[dim],
                "first_block": min(m.block for m in rows),
                "last_block": max(m.block for m in rows),
                "num_blocks": len(rows),
                "peak_block": peak.block,
                "peak_value": peak.value,
                "peak_ratio": peak.ratio,
            }
        )
    site_rows.sort(key=lambda s: -abs(s["peak_value"]))
    dims = list(dict.fromkeys(s["dim"] for s in site_rows))
    token_positions = list(dict.fromkeys(s["token"] for s in site_rows))
    return {
        "dims": dims,
        "tokens": [{"token": t, "token_text": tokens[t], "token_kind": kinds[t]} for t in token_positions],
        "first_block": min(m.block for m in few),
        "last_block": max(m.block for m in few),
        "sites": site_rows,
        "features": feature_rows,
    }


@result_kind(KIND, "scan.json", view=scan_charts)
@dataclass
class ScanResult:
    """What `scan` found on one input."""

    model: str
    structure: Structure
    hidden_size: int
    tokens: list[str]
    kinds: list[str]
    thresholds: Thresholds
    records: list[BlockRecord]
    massive: list[MassiveActivation]
    summary: dict
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    prompt: str | None = None
    dtype: str = "float32"
    source: str | None = None  # the file the model came from (e.g. a GGUF), when the loader says
    quantization: str | None = None  # e.g. "Q4_1 GGUF, de-quantized to float32"
    execution: dict | None = None  # how the run executed: `LoadedModel.execution`

    @property
    def num_blocks(self) -> int:
        return len(self.records)

    @property
    def first_block(self) -> int | None:
        return self.summary["first_block"]

    def top_magnitudes(self, rank: int) -> list[float]:
        """The rank-th largest magnitude (1-based) of every block; NaN where there is none (or nothing finite)."""
        return [
            float(r.top_magnitudes[rank - 1]) if r.top_values.numel() >= rank and not r.all_nonfinite else math.nan
            for r in self.records
        ]

    def medians(self) -> list[float]:
        return [r.median for r in self.records]

    @property
    def precision(self) -> Precision:
        """Whether the run's dtype held the block outputs (and whether float16 would)."""
        peaks = [None if math.isnan(p) else p for p in self.top_magnitudes(1)]
        return Precision.measure(self.dtype, peaks, [i for i, r in enumerate(self.records) if r.nonfinite])

    def to_json(self) -> dict:
        blocks = []
        for index, record in enumerate(self.records):
            top = [
                {"value": v, "magnitude": abs(v), "token": t, "dim": d}
                for v, t, d in zip(record.top_values.tolist(), record.top_tokens.tolist(), record.top_dims.tolist())
            ]
            if record.all_nonfinite:  # nothing finite to rank: no top entries
                top = []
            blocks.append(
                {
                    "index": index,
                    "median": record.median,
                    "top": top,
                    "top1_ratio": (abs(top[0]["value"]) / record.median) if top and record.median > 0 else None,
                    "num_massive": int(record.massive_values.numel()),
                    "massive_truncated": record.massive_truncated,
                    "nonfinite": record.nonfinite,
                    "all_nonfinite": record.all_nonfinite,
                    "nonfinite_sites": [{"token": t, "dim": d, "value": repr(v)} for t, d, v in record.nonfinite_sites],
                }
            )
        return {
            "kind": KIND,
            "model": self.model,
            "source": self.source,
            "quantization": self.quantization,
            "num_blocks": self.num_blocks,
            "hidden_size": self.hidden_size,
            "blocks_path": self.structure.blocks_path,
            "dtype": self.dtype,
            "prompt": self.prompt,
            "tokens": self.tokens,
            "token_kinds": self.kinds,
            "thresholds": self.thresholds.to_json(),
            "blocks": blocks,
            "massive": [m.to_json() for m in self.massive],
            "summary": self.summary,
            "nonfinite_blocks": [b["index"] for b in blocks if b["nonfinite"]],
            "precision": self.precision.to_json(),
            "execution": self.execution,
        }

    def show(self, console: Console) -> None:
        """The terminal table of every block and a one-line summary."""
        views.show_scan(self, console)

    def write(self, out: Path) -> None:
        """scan.json, report.md and the figures into `out`."""
        views.write_scan(self, out)
