"""Library errors name Python parameters; a command line names flags. This is the one translation between them.

A library message marks what its caller set in backticks, in one of two forms (see `massact.validate.given`):

- `` `seq_len=1` ``: the parameter and the value given (a string as Python writes it, `'blocks'`);
- `` `seq_len` ``: the parameter alone; a parameter inside another is named by its path (`thresholds.ratio`).

`to_flags` rewrites exactly those marks, for the command that ran: an option's parameter becomes its flag
(`--seq-len 1`, `--seq-len`), an argument's its metavar (`OUT /tmp/x`, `OUT`); a boolean given as
`add_special_tokens=False` becomes the flag that sets it (`--no-special-tokens`, from `NEGATED`). A library
parameter that the command calls by another name is looked up in `RENAMED`. A mark the command has no flag
for is left as it is, and so is every word outside backticks: `samples` in a sentence is a word,
`` `samples=0` `` is a parameter.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping

RENAMED = {  # library parameter -> the command's parameter, where the two names differ
    "blocks_path": "blocks",
    "corpora": "corpus",
    "limit": "tasks_limit",
    "run_dir": "out",
    "shard_of": "shard",
    "sinks": "tokens",
    "sites.dims": "dims",
    "sites.tokens": "tokens",
    "thresholds.abs": "abs_threshold",
    "thresholds.ratio": "ratio_threshold",
}
NEGATED = {  # library boolean -> the command's flag that sets it False, where that is not `no_<name>`
    "add_special_tokens": "no_special_tokens",
}

MARK = re.compile(r"`([A-Za-z_][\w.]*)(?:=([^`]*))?`")


def flags_of(params: Iterable) -> dict[str, str]:
    """What a user types for each click parameter, by its Python name: an option's long flag, an argument's metavar."""
    flags: dict[str, str] = {}
    for param in params:
        if param.param_type_name == "option":
            long = [opt for opt in param.opts if opt.startswith("--")]
            if long:
                flags[param.name] = long[0]
        elif param.param_type_name == "argument":
            flags[param.name] = param.metavar or param.name.upper()
    return flags


def _as_typed(value: str) -> str:
    """A value as the user typed it on the command line: a Python string literal loses its quotes, unless it is
    empty or holds whitespace (where the quotes show where it starts and ends)."""
    if value[:1] in ("'", '"'):
        try:
            text = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(text, str) and text and not any(c.isspace() for c in text):
            return text
    return value


def _flag(name: str, flags: Mapping[str, str]) -> str | None:
    return flags.get(name) or flags.get(RENAMED.get(name, ""))


def _swap(match: re.Match, flags: Mapping[str, str]) -> str:
    name, value = match.group(1), match.group(2)
    negation = _flag(NEGATED.get(name, f"no_{name}"), flags) if value == "False" else None
    if negation is not None:  # add_special_tokens=False -> --no-special-tokens
        return negation
    flag = _flag(name, flags)
    if flag is None:
        return match.group(0)
    if value is None or (value == "True" and flag.startswith("--")):
        return flag
    return f"{flag} {_as_typed(value)}"


def to_flags(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each marked parameter named as the command line names it (`flags`, from `flags_of`)."""
    return MARK.sub(lambda match: _swap(match, flags), message)


def for_command(message: str, command) -> str:
    """`message` as the user of the click `command` reads it: its own flags in place of the library's parameters."""
    return to_flags(message, flags_of(command.params))
