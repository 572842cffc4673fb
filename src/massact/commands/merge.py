"""`massact merge`: combine corpus scans (of disjoint sequences) into one summary."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import Opt, emit_result
from massact.outputs import check_output_dir


def merge_command(
    runs: Annotated[list[Path], typer.Argument(help="Output folders of `massact scan --corpus` runs.")],
    out: Opt.Out = None,
    as_json: Opt.Json = False,
) -> None:
    """Merge corpus scans exactly: counts, sums, top-k and per-sequence statistics of all runs."""
    if out is not None:
        check_output_dir(out)
    from massact.corpus import merge

    result = merge(runs)
    result.command = shlex.join(["massact", *sys.argv[1:]])
    emit_result(result, out, as_json)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_command)
