"""Run the `massact` command in-process, as a user would from a shell."""

from __future__ import annotations

import contextlib
import io

import pytest

from massact.cli import main


def run(argv: list[str], capsys) -> tuple[int | None, str, str]:
    """Exit status, stdout and stderr of `massact ARGV`."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def run_captured(argv: list[str]) -> tuple[int | None, str, str]:
    """`run` without capsys, for fixtures that outlive one test."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main(argv)
    return exit_info.value.code, out.getvalue(), err.getvalue()
