"""Markdown pieces of the reports that `massact.format` leaves to the writer."""

from __future__ import annotations


def plural(count: int, word: str) -> str:
    """`word` or `word`s, as `count` needs ("dim 507", "dims 507, 138")."""
    return word if count == 1 else f"{word}s"
