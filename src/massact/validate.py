"""The checks on what a caller gives that many analyses share, each worded once.

Every refusal is a one-line `MassactError` that names the parameter and the value given, marked as
`massact.commands.flags` reads them, so the command line names its flag instead:

- `at_least("samples", 0)` -> ``samples=0`: must be at least 1` (`--samples 0: must be at least 1` from the CLI);
- `check_context("seq_len", 600, 512)` ->
  ``seq_len=600` is longer than the model's context (512 tokens); lower `seq_len``;
- `check_prompt("  ")` -> `the prompt is empty; give `prompt` some text`.

Configs call them in `__post_init__`; a command that must refuse before loading a model calls the same one.
"""

from __future__ import annotations

from massact.errors import MassactError


def given(name: str, value: object) -> str:
    """`name` set to `value`, as an error names it: `` `samples=0` `` (a string as Python writes it)."""
    return f"`{name}={value!r}`"


def param(name: str) -> str:
    """`name` alone, as an error names it: `` `seq_len` ``."""
    return f"`{name}`"


def at_least(name: str, value: float, least: float = 1, why: str = "") -> None:
    """Refuse `value` of parameter `name` below `least`; `why` (optional) says why in parentheses."""
    if value < least:
        reason = f" ({why})" if why else ""
        raise MassactError(f"{given(name, value)}: must be at least {least}{reason}")


def check_context(name: str, tokens: int, limit: int | None, fix: str = "") -> None:
    """Refuse `tokens` (what parameter `name` asks for) beyond the model's context of `limit` tokens (None: no
    known limit).

    `name` is a parameter (`seq_len`) or a phrase with a space (`the prompt`); `fix`
    defaults to lowering the parameter.
    """
    if limit is None or tokens <= limit:
        return
    what = f"{name} ({tokens} tokens)" if " " in name else given(name, tokens)
    raise MassactError(f"{what} is longer than the model's context ({limit} tokens); {fix or f'lower {param(name)}'}")


def check_prompt(prompt: str | None) -> None:
    """Refuse a missing or blank prompt."""
    if not prompt or not prompt.strip():
        raise MassactError("the prompt is empty; give `prompt` some text")
