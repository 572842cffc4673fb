"""Per-site means: `SiteMeans`, and the one reader of their file (`means.json` of a corpus scan or of
`massact intervene`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from massact.errors import MassactError
from massact.interventions.phrasing import blocks_span
from massact.tokens import KINDS
from massact.validate import given

MEANS_JSON = "means.json"
_SITE_KEYS = ("block", "dim", "token_kind", "mean")


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
                "give the means file of this model, or `means_samples` to compute them"
            )
        if self.num_blocks != num_blocks:
            raise MassactError(
                f"{where} is for {self.num_blocks} blocks but the model has {num_blocks}; "
                "give the means file of this model, or `means_samples` to compute them"
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
                "choose a `block` it covers, or use `means_samples`"
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


def read_means(path: str | Path) -> SiteMeans:
    """A means.json (or the run folder holding one) as `SiteMeans`; anything else -> one-line MassactError.

    The file has integer `hidden_size` and `num_blocks`, a list `sites` of {block, dim, token_kind,
    mean, count}, and optionally `windows` ({window source: [stream indices]}, the windows it was taken over).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / MEANS_JSON).is_file():
            raise MassactError(
                f"`means={str(path)!r}`: a directory without {MEANS_JSON}; give the folder a corpus scan was written to"
            )
        path = path / MEANS_JSON
    where = given("means", str(path))
    if not path.is_file():
        raise MassactError(f"{where}: no such file; give the means.json of a corpus scan, or use `means_samples`")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise MassactError(f"{where}: not a JSON file; give the means.json written by a corpus scan") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), int) for k in ("hidden_size", "num_blocks")):
        raise MassactError(f"{where}: no integer 'hidden_size' and 'num_blocks'; give the means.json of a corpus scan")
    sites = data.get("sites")
    if not isinstance(sites, list):
        raise MassactError(f"{where}: no list 'sites'; give the means.json of a corpus scan")
    entries: dict[tuple[int, int, str], tuple[float, int]] = {}
    for number, site in enumerate(sites):
        if not isinstance(site, dict) or not all(k in site for k in _SITE_KEYS):
            raise MassactError(f"{where}: site {number} lacks one of {', '.join(_SITE_KEYS)}")
        try:
            key = (int(site["block"]), int(site["dim"]), str(site["token_kind"]))
            mean = float(site["mean"])
            count = int(site.get("count") or 1)
        except (TypeError, ValueError):
            raise MassactError(f"{where}: site {number} has a non-numeric block, dim, mean or count") from None
        if not math.isfinite(mean):
            raise MassactError(f"{where}: site {number} has a non-finite mean ({site['mean']!r})")
        entries[key] = (mean, count)
    return SiteMeans(
        hidden_size=data["hidden_size"],
        num_blocks=data["num_blocks"],
        entries=entries,
        model=data.get("model"),
        source=where,
        windows=_windows(data.get("windows"), where),
    )


def _windows(value: object, where: str) -> dict[str, list[int]] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(ids, list) and all(isinstance(i, int) for i in ids) for ids in value.values()
    ):
        raise MassactError(f"{where}: 'windows' must map window sources to lists of window indices")
    return {str(k): list(v) for k, v in value.items()}
