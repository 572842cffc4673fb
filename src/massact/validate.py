"""The checks on what a user gives that many commands share, each worded once.

Every refusal is a one-line `MassactError` that names the option and the value given:

- `at_least("--samples", 0)` -> `--samples 0: must be at least 1`;
- `check_context("--seq-len", 600, 512)` ->
  `--seq-len 600 is longer than the model's context (512 tokens); lower --seq-len`;
- `check_prompt("  ")` -> `the prompt is empty; give --prompt TEXT (or --text-file PATH) with some text`.

Configs call them in `__post_init__`; a command that must refuse before loading a model calls the same one.
"""

from __future__ import annotations

from massact.errors import MassactError


def at_least(flag: str, value: float, least: float = 1, why: str = "") -> None:
    """Refuse `value` of `flag` below `least`; `why` (optional) says why in parentheses."""
    if value < least:
        reason = f" ({why})" if why else ""
        raise MassactError(f"{flag} {value}: must be at least {least}{reason}")


def check_context(flag: str, tokens: int, limit: int | None, fix: str = "") -> None:
    """Refuse `tokens` (what `flag` asks for) beyond the model's context of `limit` tokens (None: no known limit).

    `flag` is an option (`--seq-len`) or a phrase (`the prompt`); `fix` defaults to lowering the option.
    """
    if limit is None or tokens <= limit:
        return
    what = f"{flag} {tokens}" if flag.startswith("-") else f"{flag} ({tokens} tokens)"
    raise MassactError(f"{what} is longer than the model's context ({limit} tokens); {fix or f'lower {flag}'}")


def check_prompt(prompt: str | None) -> None:
    """Refuse a missing or blank prompt."""
    if not prompt or not prompt.strip():
        raise MassactError("the prompt is empty; give --prompt TEXT (or --text-file PATH) with some text")
