"""One progress style and one message style for every long job (stderr, so stdout stays clean for --json).

Bars are drawn only on a terminal and cleared when done: under a pipe or in a log file nothing of
them is printed. Messages carry no timestamps, levels or source locations.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

from rich.console import Console
from tqdm.auto import tqdm

T = TypeVar("T")

console = Console(stderr=True, highlight=False, log_time=False, log_path=False)


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def bar(total: int | None, description: str, unit: str = "it", enabled: bool = True, initial: int = 0) -> tqdm:
    """A progress bar to `update(n)` by hand (use as a context manager); drawn on a terminal only."""
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit=unit,
        leave=False,
        disable=not (enabled and _on_terminal()),
        dynamic_ncols=True,
        file=sys.stderr,
    )


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
