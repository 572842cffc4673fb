"""Terminal tables that never cut a number: wide enough under a pipe, numeric cells never wrapped."""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def numeric_column(table: Table, name: str) -> None:
    """A right-aligned column whose numbers are never shortened (folded, never cut, in a narrow terminal)."""
    table.add_column(name, justify="right", overflow="fold")


def print_table(console: Console, table: Table) -> None:
    """Print `table`; when stdout is no terminal, at the width the table needs (so no cell is cut)."""
    if console.is_terminal:
        console.print(table)
        return
    width = Measurement.get(console, console.options.update_width(10_000), table).maximum
    console.width = max(width, console.width)
    console.print(table)
