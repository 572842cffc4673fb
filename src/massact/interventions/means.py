"""Read the per-site means of a corpus scan (`means.json`) for the `mean` intervention."""

from __future__ import annotations

import json
from pathlib import Path

from massact.errors import MassactError
from massact.interventions.hooks import SiteMeans

_SITE_KEYS = ("block", "dim", "token_kind", "mean")


def read_means(path: Path) -> SiteMeans:
    """`means.json` with top-level `hidden_size`, `num_blocks` and `sites` [{block, dim, token_kind, mean, count}]."""
    path = Path(path).expanduser()
    where = f"--means {path}"
    if not path.is_file():
        raise MassactError(f"{where}: no such file; give the means.json of a corpus scan, or use --means-samples N")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
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
        if mean != mean or mean in (float("inf"), float("-inf")):
            raise MassactError(f"{where}: site {number} has a non-finite mean ({site['mean']!r})")
        entries[key] = (mean, count)
    return SiteMeans(
        hidden_size=data["hidden_size"],
        num_blocks=data["num_blocks"],
        entries=entries,
        model=data.get("model"),
        source=where,
    )
