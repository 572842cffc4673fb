"""The `massact` command. Each sub-command lives in `massact/commands/<name>.py` with a `register(app)`.

Every failure a user can cause ends the same way: one line `massact: error: ...` on stderr and exit
status 2, whether it is a bad value for an option (click's usage errors), a `MassactError` from the
checks (whose Python parameters, `seq_len=1`, are named by the command's flags, `--seq-len 1`: see
`commands/flags.py`), or an `OSError` from the file system. Ctrl-C ends with one line, `massact: interrupted; nothing
was written` (or what an interrupted command keeps, carried as the `KeyboardInterrupt`'s message), and
exit status 130.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys

import typer

import massact.commands
from massact.commands.flags import for_command
from massact.errors import MassactError
from massact.outputs import invocation

try:  # newer typer carries its own copy of click
    from typer._click import ClickException
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import ClickException, get_current_context  # type: ignore[no-redef]

PROG = "massact"

app = typer.Typer(
    name=PROG,
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


def _commands(command) -> list:
    """`command` and every sub-command below it."""
    found = [command]
    for sub in (getattr(command, "commands", None) or {}).values():
        found.extend(_commands(sub))
    return found


def _without_flag_metavars(group):
    """Flags take no value, so their help shows no `<bool>`: typer's rich help prints a type for every
    option that has no metavar, so give each flag an empty one (the help option included)."""
    for command in _commands(group):
        with command.make_context(command.name, ["--help"], resilient_parsing=True) as ctx:
            params = list(command.get_params(ctx))
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
    return group


class Interrupted(Exception):
    """Ctrl-C inside a command, carried past typer (which would turn it into a silent exit 130)."""


def _as_command_lines(group):
    """Wrap every command so that it runs as one command line: its writes are one invocation (see
    `outputs.invocation`), a `MassactError` names the command's flags where the library named its parameters
    (`commands.flags`), and Ctrl-C reaches `main` with what the command says it keeps."""
    for command in _commands(group):
        callback = command.callback
        if callback is None or getattr(callback, "_command_line", False):
            continue

        @functools.wraps(callback)
        def command_line(*args, _callback=callback, _command=command, **kwargs):
            try:
                with invocation(get_current_context().command_path):
                    return _callback(*args, **kwargs)
            except KeyboardInterrupt as exc:
                raise Interrupted(str(exc)) from None
            except MassactError as exc:
                raise MassactError(for_command(str(exc), _command)) from exc

        command_line._command_line = True
        command.callback = command_line
    return group


@functools.cache
def build_command():
    """The click command behind `app`, with the help tidied and each command run as a command line.

    Built once a process: click commands keep no state between invocations, and building one
    costs more than parsing a command line.
    """
    return _as_command_lines(_without_flag_metavars(typer.main.get_command(app)))


def _interrupted(kept: str = "") -> None:
    print(f"{PROG}: interrupted; {kept or 'nothing was written'}", file=sys.stderr)
    sys.exit(130)


def _usage_message(exc: ClickException) -> str:
    """One line for a click error, naming the option and where to read more."""
    message = " ".join(exc.format_message().split())
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message = f"{message.rstrip('.')} (see `{ctx.command_path} --help`)"
    return message


def _fail(message: str, status: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit with status 2."""
    command = build_command()
    try:
        code = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `massact` alone, or a group without its command
            print(exc.format_message(), file=sys.stderr)
            sys.exit(2)
        _fail(_usage_message(exc))
    except Interrupted as exc:
        _interrupted(str(exc))
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except MassactError as exc:
        _fail(" ".join(str(exc).split("\n")))
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _fail(f"could not read or write{where} ({exc.strerror or exc}); check the path and free space")
    if code == 130:  # typer's exit for a Ctrl-C outside any command (while parsing)
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)
