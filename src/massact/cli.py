"""The `massact` command. Each sub-command lives in `massact/commands/<name>.py` with a `register(app)`."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

import massact.commands
from massact.errors import MassactError

app = typer.Typer(
    name="massact",
    help="Find, measure, explain and neutralize massive activations in transformer models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Find, measure, explain and neutralize massive activations in transformer models."""


for _info in sorted(pkgutil.iter_modules(massact.commands.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"massact.commands.{_info.name}")
    if hasattr(_module, "register"):
        _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit with status 2."""
    try:
        app(args=argv, standalone_mode=True)
    except MassactError as exc:
        print(f"massact: error: {exc}", file=sys.stderr)
        sys.exit(2)
