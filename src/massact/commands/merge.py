"""`massact merge`: combine corpus scans (of disjoint sequences) into one summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import (
    JsonOpt,
    OutOpt,
)
from massact.corpus.cli import merge_runs, show
from massact.outputs import check_output_dir


def merge_command(
    runs: Annotated[list[Path], typer.Argument(help="Output directories of `massact scan --corpus` runs.")],
    out: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Merge corpus scans exactly: counts, sums, top-k and per-sequence statistics of all runs."""
    if out is not None:
        check_output_dir(out)
    show(merge_runs(runs), out, as_json)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_command)
