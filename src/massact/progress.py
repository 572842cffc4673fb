"""One progress style and one message style for every long job (stderr, so stdout stays clean for --json)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from tqdm.auto import tqdm

T = TypeVar("T")

console = Console(stderr=True, highlight=False)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """`items` with a progress bar on stderr; the bar is drawn on a terminal only and cleared when done."""
    yield from tqdm(items, desc=description, total=total, unit=unit, leave=False, disable=None, dynamic_ncols=True)


def say(message: str) -> None:
    """A progress or status message in the tool's own words (stderr, no timestamps or source locations)."""
    console.print(message, markup=False)
