"""The kinds of result massact writes, each registered by the package that makes it.

An analysis's result class says, with `@result_kind(...)`, the `kind` its JSON carries, the file its JSON is
written to and the view that draws its charts in report.html. The decorator also makes the class's
`write(folder)` write report.html after its own files, so a result written from Python is the folder the
command writes. Nothing here lists the analyses: a new one registers itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from massact.html.charts import Chart

View = Callable[[dict, object], list[Chart]]  # (the result's JSON, the result or None) -> its charts
R = TypeVar("R", bound=type)


@dataclass(frozen=True)
class ResultKind:
    """A registered result: its JSON's `kind`, the JSON file a run folder holds, and its charts (None: generic)."""

    kind: str
    json_name: str | None
    view: View | None = None


_KINDS: dict[str, ResultKind] = {}


def register_kind(kind: str, json_name: str | None, view: View | None = None) -> None:
    """Register (or replace) the result kind `kind`."""
    _KINDS[kind] = ResultKind(kind, json_name, view)


def registered(kind: str | None) -> ResultKind | None:
    """The registered kind `kind`, or None."""
    return _KINDS.get(kind) if kind is not None else None


def json_names() -> list[str]:
    """The main JSON files of the registered kinds, in registration order."""
    return list(dict.fromkeys(k.json_name for k in _KINDS.values() if k.json_name))


def result_kind(kind: str, json_name: str | None, view: View | None = None) -> Callable[[R], R]:
    """Class decorator: register the class's kind; its `write(folder)` makes the folder and also writes report.html."""

    def decorate(cls: R) -> R:
        register_kind(kind, json_name, view)
        cls.result_kind = kind
        write = cls.__dict__.get("write")
        if write is not None:

            @functools.wraps(write)
            def write_with_page(self, out: Path, *args, **kwargs) -> None:
                from massact.html.page import write_report_html

                Path(out).mkdir(parents=True, exist_ok=True)
                write(self, out, *args, **kwargs)
                write_report_html(Path(out), self)

            cls.write = write_with_page
        return cls

    return decorate
