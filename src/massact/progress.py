"""One progress style and one message style for every long job (stderr, so stdout stays clean for --json).

Bars are drawn only on a terminal and cleared when done: under a pipe or in a log file nothing of
them is printed (`steps` prints a plain line now and then instead). Messages carry no timestamps, levels
or source locations.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True, highlight=False, log_time=False, log_path=False)


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Bar:
    """A progress bar on stderr, drawn by rich on a terminal only and cleared when done (use as a context manager).

    `update(n)` advances it; `set_description` and `set_postfix_str` change the text around it; `n` is the count
    so far. With nothing to draw (a pipe, a log file, `enabled=False`) it only counts.
    """

    def __init__(self, total: int | None, description: str, unit: str, enabled: bool, initial: int) -> None:
        self.n, self.total = initial, total
        self._progress: Progress | None = None
        if enabled and _on_terminal():
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"),
                console=console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=total, completed=initial, note="")

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def set_description(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def set_postfix_str(self, note: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, note=note)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(total: int | None, description: str, unit: str = "it", enabled: bool = True, initial: int = 0) -> Bar:
    """A progress bar to `update(n)` by hand (use as a context manager); drawn on a terminal only."""
    return Bar(total, description, unit, enabled, initial)


def track(
    items: Iterable[T], description: str, total: int | None = None, unit: str = "it", enabled: bool = True
) -> Iterator[T]:
    """`items` with a progress bar on stderr; the bar is drawn on a terminal only and cleared when done."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, description, unit, enabled) as progress:
        for item in items:
            yield item
            progress.update(1)


def status(message: str) -> AbstractContextManager:
    """A spinner with `message` while a step runs (a terminal only; nothing under a pipe)."""
    if not console.is_terminal:
        return nullcontext()
    return console.status(message)


def say(message: str) -> None:
    """A progress or status message in the tool's own words (stderr, no timestamps or source locations)."""
    console.print(message, markup=False, soft_wrap=True)


LINE_EVERY_S = 10.0  # off a terminal: at most one progress line this often (the first and the last always)


class Steps:
    """Progress over `total` steps that also shows where no bar is drawn.

    On a terminal: a bar (as `bar`), its note beside it. Elsewhere (a pipe, a log file): plain lines
    `description: n/total unit (note)` through `say`, for the first step, then at most one every
    `LINE_EVERY_S` seconds, and the last, so a long pass is never silent.
    """

    def __init__(self, total: int, description: str, unit: str = "it", enabled: bool = True) -> None:
        self.total, self.description, self.unit, self.enabled = total, description, unit, enabled
        self.done = 0
        self._lines = enabled and not _on_terminal()
        self._bar = bar(total, description, unit, enabled and not self._lines)
        self._last_line: float | None = None

    def advance(self, n: int = 1, note: str = "") -> None:
        """`n` more steps done; `note` says what the last one found (e.g. a perplexity)."""
        self.done += n
        self._bar.update(n)
        if note:
            self._bar.set_postfix_str(note)
        if not self._lines:
            return
        now = time.monotonic()
        due = self._last_line is None or now - self._last_line >= LINE_EVERY_S or self.done >= self.total
        if due:
            self._last_line = now
            say(f"{self.description}: {self.done}/{self.total} {self.unit}" + (f" ({note})" if note else ""))

    def describe(self, description: str) -> None:
        """Say what the steps are from now on (e.g. the block being run)."""
        self.description = description
        self._bar.set_description(description)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def steps(total: int, description: str, unit: str = "it", enabled: bool = True) -> Steps:
    """Progress over `total` steps: a bar on a terminal, plain lines elsewhere (see `Steps`)."""
    return Steps(total, description, unit, enabled)
