"""Writing results: all files of a run appear together, or none do; a folder holds one run.

A run's folder carries a small marker, `.massact-run.json`, naming the command and the files it
wrote. Writing a new run into that folder first sets the previous run's files aside, so no mix of
two runs is left; files massact did not write are never touched. Every file is written with the
ordinary permissions of a new file (0644 under the usual umask).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from massact.errors import MassactError
from massact.validate import given

MARKER = ".massact-run.json"


@dataclass
class _Invocation:
    command: str
    written: set[Path] = field(default_factory=set)


_INVOCATION: ContextVar[_Invocation | None] = ContextVar("massact_invocation", default=None)


@contextmanager
def invocation(command: str) -> Iterator[None]:
    """Run one command line, `command` (`massact scan`): each folder's marker names it, and a folder it writes
    twice gets one run of both writes. The command line enters it; from Python, outside it, the marker says
    `massact` and every write replaces the run before it."""
    token = _INVOCATION.set(_Invocation(command))
    try:
        yield
    finally:
        _INVOCATION.reset(token)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_output_dir(out: Path, option: str = "out") -> Path:
    """Fail early, before any work, when `out` cannot be created or written (`option`, the parameter, names it in
    errors).

    The check is truthful for every user (root ignores permission bits): the missing folders are
    made, a probe file is written in `out`, and everything the check made is removed again. Under a
    data-parallel launch only the main process checks: two checks at once would trip over each other's probe.
    """
    out = Path(out).expanduser()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0:
        return out  # another process of a torchrun / accelerate launch: the main one alone writes, and checks
    if out.exists() and not out.is_dir():
        raise MassactError(f"{given(option, str(out))}: exists and is not a directory; give a directory path")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise MassactError(f"{given(option, str(out))}: {existing} is a file, not a directory; choose another path")
    made: list[Path] = []
    try:
        for folder in reversed([out, *out.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        fd, probe = tempfile.mkstemp(prefix=".massact-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MassactError(
            f"{given(option, str(out))}: cannot be written ({_why(exc)}); choose a directory you can write to"
        ) from None
    finally:
        for folder in reversed(made):
            with suppress(OSError):
                folder.rmdir()
    return out


def _set_modes(root: Path) -> None:
    """Give everything under `root` the permissions of a plain new file or folder (not mkstemp's 0600)."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def read_marker(out: Path) -> dict | None:
    """The marker of the run in `out` ({"command": ..., "files": [...]}), or None."""
    try:
        data = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return data


def _command_name() -> str:
    """`massact <sub-command>` of the running command line, or `massact` from Python."""
    running = _INVOCATION.get()
    return running.command if running is not None else "massact"


def _previous_files(out: Path, new: list[str], replace: bool) -> list[str]:
    """Names in `out` that the new run supersedes: the previous run's files, or only those overwritten."""
    if not out.is_dir():
        return []
    marker = read_marker(out)
    names = set(new)
    if marker is not None and replace:
        names |= {n for n in marker["files"] if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")}
    names.add(MARKER)
    return sorted(n for n in names if os.path.lexists(out / n))


def _commit(staging: Path, out: Path, command: str, replace: bool) -> list[str]:
    """Move the staged files into `out`, setting any previous run aside; on error, put everything back."""
    new = sorted(p.name for p in staging.iterdir())
    marker = read_marker(out) if out.is_dir() else None
    files = new
    if marker is not None and not replace:
        files = sorted(set(new) | {n for n in marker["files"] if isinstance(n, str)})
    (staging / MARKER).write_text(json.dumps({"command": command, "files": files}, indent=2) + "\n", encoding="utf-8")
    _set_modes(staging)
    if not out.exists():
        os.replace(staging, out)
        return new
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in _previous_files(out, new, replace):
            os.replace(out / name, aside / name)
            moved_old.append(name)
        for name in [*new, MARKER]:
            os.replace(staging / name, out / name)
            moved_new.append(name)
    except BaseException:  # an OSError, or Ctrl-C half-way: put everything back
        restored = True
        for source, target, names in ((out, staging, moved_new), (aside, out, moved_old)):
            for name in names:
                try:
                    os.replace(source / name, target / name)
                except OSError:
                    restored = False
        if restored:
            shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return new


def _invocation_writes() -> set[Path] | None:
    """Folders the running command line has already written (None outside a command line)."""
    running = _INVOCATION.get()
    return None if running is None else running.written


@contextmanager
def staged_output(
    out: Path, *, command: str | None = None, replace: bool = True, option: str = "out"
) -> Iterator[Path]:
    """Yield a staging directory; on success its files move into `out`, on error nothing is left.

    `out` then holds this run only: the files of an earlier massact run there (named in its marker)
    are removed, other files stay. With `replace=False`, or when the same command line already wrote
    into `out`, the new files join the run already there instead (a run written in several steps).
    """
    out = check_output_dir(out, option)
    key = out.resolve()
    written = _invocation_writes()
    replace = replace and (written is None or key not in written)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise MassactError(
            f"{given(option, str(out))}: cannot be written ({_why(exc)}); choose another directory"
        ) from None
    try:
        yield staging
        _commit(staging, out, command or _command_name(), replace)
        if written is not None:
            written.add(key)
    except OSError as exc:
        raise MassactError(
            f"{given(option, str(out))}: could not write ({_why(exc)}); nothing was written there"
        ) from None
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


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def restore_non_finite(value):
    """The inverse of the JSON writer's cleaning: the strings "nan", "inf", "-inf" back to floats."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: restore_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_non_finite(v) for v in value]
    return value


def to_json_text(data: dict) -> str:
    return json.dumps(_clean(data), indent=2, ensure_ascii=False, allow_nan=False)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(to_json_text(data) + "\n", encoding="utf-8")
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` so that a reader (or an interruption) sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def publish_dir(staging: Path, target: Path, done: str) -> None:
    """Rename the finished folder `staging` to `target`, a cache entry that is finished when it holds `done`.

    An unfinished `target` is replaced; when another process finished the same entry first, its copy is
    kept and `staging` dropped, so readers of a finished entry never see it vanish.
    """
    if not (target / done).exists():
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
            return
        except OSError:
            if not (target / done).exists():
                raise
    shutil.rmtree(staging, ignore_errors=True)
