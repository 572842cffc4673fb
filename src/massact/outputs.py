"""Writing results: all files of a run appear together, or none do."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from massact.errors import MassactError


def check_output_dir(out: Path) -> Path:
    """Fail early, before any work, when `out` cannot be created or written."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise MassactError(f"--out {out}: exists and is not a directory; give a directory path")
    probe_parent = out if out.exists() else out.parent
    while not probe_parent.exists() and probe_parent != probe_parent.parent:
        probe_parent = probe_parent.parent
    if not probe_parent.is_dir():
        raise MassactError(f"--out {out}: {probe_parent} is a file, not a directory; choose another path")
    if not os.access(probe_parent, os.W_OK | os.X_OK):
        raise MassactError(f"--out {out}: {probe_parent} is not writable; choose a directory you can write to")
    return out


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a staging directory; on success its files move into `out`, on error nothing is left."""
    out = check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        out.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except OSError as exc:
        raise MassactError(f"--out {out}: could not write ({exc.strerror or exc}); choose another directory") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _clean(value):
    """JSON has no inf/NaN: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json_text(data: dict) -> str:
    return json.dumps(_clean(data), indent=2, ensure_ascii=False, allow_nan=False)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(to_json_text(data) + "\n", encoding="utf-8")
    return path
