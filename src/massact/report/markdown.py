"""Markdown pieces of the reports that `massact.format` leaves to the writer: inline code outside tables."""

from __future__ import annotations

import re

from massact.format import show_token


def inline_code(text: str) -> str:
    """User text as inline code outside a table: line breaks shown as `\\n`, backticks survive, `|` as is.

    (Inside a table cell use `massact.format.md_code`, which also escapes `|`; outside a table a code
    span shows that backslash literally.)
    """
    text = show_token(text) if text.strip() == "" else text.replace("\r", "\\r").replace("\n", "\\n")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plural(count: int, word: str) -> str:
    """`word` or `word`s, as `count` needs ("dim 507", "dims 507, 138")."""
    return word if count == 1 else f"{word}s"
