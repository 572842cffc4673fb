"""How numbers, tokens and user text are shown: one way everywhere (terminal, report.md, figures)."""

from __future__ import annotations

import math
import re

_WHITESPACE_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v", "\f": "\\f"}


def fmt_number(value: float | int | None, decimals: int = 2) -> str:
    """A number for people: thousands separators, never scientific notation below 1e15.

    Integers print whole (`23,040`); floats of 1,000 or more with one decimal (`2,173,910.4`),
    smaller ones with `decimals` decimals (`41.04`), tiny ones with three significant digits.
    None is `-`; inf and NaN are `inf`, `-inf`, `nan`.
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    value = float(value)
    if not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    size = abs(value)
    if size >= 1e15:
        return f"{value:.3e}"
    if size >= 1000:
        return f"{value:,.1f}"
    if size == 0 or size >= 10**-decimals:
        return f"{value:,.{decimals}f}"
    return f"{value:.3g}"


def fmt_ppl(value: float | None) -> str:
    """A perplexity: two decimals below 1,000 (41.04 and 41.00 differ visibly), one above (2,173,910.4)."""
    return fmt_number(None if value is None else float(value), decimals=2)


def fmt_activation(value: float | None) -> str:
    """An activation or median: one decimal from 10 up (`23,147.1`), three significant digits below (`0.897`)."""
    if value is None or value != value:
        return "-"
    value = float(value)
    if not math.isfinite(value) or abs(value) >= 10:
        return fmt_number(value, decimals=1)
    return f"{value:.3g}"


def show_token(text: str) -> str:
    """A token as a label: whitespace made visible (`\\n`, `\\t`, `␣` for a space-only token), never blank."""
    if text == "":
        return "∅"
    if text.strip() == "":
        return "".join("␣" if ch == " " else _WHITESPACE_NAMES.get(ch, f"\\u{ord(ch):04x}") for ch in text)
    return "".join(_WHITESPACE_NAMES.get(ch, ch) for ch in text)


def md_escape(text: str) -> str:
    """User text inside a Markdown table cell or paragraph: `|`, backticks and line breaks escaped."""
    text = str(text).replace("\\", "\\\\")
    for ch in "|`*_[]<>":
        text = text.replace(ch, "\\" + ch)
    for ch, name in (("\r\n", "\\n"), *_WHITESPACE_NAMES.items()):
        text = text.replace(ch, "\\" + name)
    return text


def md_code(text: str, table: bool = True) -> str:
    """User text as Markdown inline code that survives backticks and line breaks.

    In a table cell (`table`) `|` is escaped too; outside a table a code span would show that backslash.
    """
    text = show_token(str(text)) if str(text).strip() == "" else str(text).replace("\r", "\\r").replace("\n", "\\n")
    if table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
