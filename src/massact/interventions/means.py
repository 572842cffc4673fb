"""The one reader of per-site means (`means.json` of a corpus scan or of `massact intervene`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from massact.errors import MassactError
from massact.interventions.hooks import SiteMeans

MEANS_JSON = "means.json"
_SITE_KEYS = ("block", "dim", "token_kind", "mean")


def read_means(path: str | Path) -> SiteMeans:
    """A means.json (or the run folder holding one) as `SiteMeans`; anything else -> one-line MassactError.

    The file has integer `hidden_size` and `num_blocks`, a list `sites` of {block, dim, token_kind,
    mean, count}, and optionally `windows` ({window source: [stream indices]}, the windows it was taken over).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / MEANS_JSON).is_file():
            raise MassactError(f"--means {path}: a directory without {MEANS_JSON}; give a corpus scan's --out folder")
        path = path / MEANS_JSON
    where = f"--means {path}"
    if not path.is_file():
        raise MassactError(f"{where}: no such file; give the means.json of a corpus scan, or use --means-samples N")
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
