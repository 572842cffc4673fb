"""The atlas's steps, each registered by the module that holds its code; the atlas runs what is registered.

A step is a function of the atlas `Context` that returns its fields of a model's row. `@atlas_step(name,
fields=..., after=...)` registers it: `fields` are the row fields it fills (null, with the reason, when it cannot
run), `after` the steps it comes after (those whose results it reads from the context, or that the atlas lists
before it). Each module of `massact.atlas.steps` registers one step when the registry is first read; nothing
here lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from massact.atlas.context import Context

StepFunction = Callable[["Context"], dict]  # the context -> the step's fields of the row
F = TypeVar("F", bound=StepFunction)


@dataclass(frozen=True)
class AtlasStep:
    """A registered step: its name, the row fields it fills, the steps it comes after, and its function."""

    name: str
    fields: tuple[str, ...]
    after: tuple[str, ...]
    run: StepFunction


_STEPS: dict[str, AtlasStep] = {}
_builtin_found = False


def register_step(name: str, run: StepFunction, fields: Sequence[str], after: Sequence[str] = ()) -> None:
    """Register (or replace) the step `name`."""
    _STEPS[name] = AtlasStep(name, tuple(fields), tuple(after), run)


def unregister_step(name: str) -> None:
    """Forget the step `name`, if registered."""
    _STEPS.pop(name, None)


def atlas_step(name: str, fields: Sequence[str], after: Sequence[str] = ()) -> Callable[[F], F]:
    """Function decorator: register the function as the step `name`, which fills `fields` and runs after `after`."""

    def decorate(run: F) -> F:
        register_step(name, run, fields, after)
        return run

    return decorate


def registered_steps() -> tuple[AtlasStep, ...]:
    """Every registered step, in the atlas's order: each after the steps it names, else in registration order."""
    _find_builtin()
    unknown = sorted({a for step in _STEPS.values() for a in step.after} - _STEPS.keys())
    if unknown:
        raise RuntimeError(f"atlas steps come after steps nobody registered: {', '.join(unknown)}")
    placed: dict[str, AtlasStep] = {}
    waiting = list(_STEPS.values())
    while waiting:
        ready = next((step for step in waiting if set(step.after) <= placed.keys()), None)
        if ready is None:
            raise RuntimeError(f"atlas steps wait on each other: {', '.join(step.name for step in waiting)}")
        placed[ready.name] = ready
        waiting.remove(ready)
    return tuple(placed.values())


def step_names() -> tuple[str, ...]:
    """The registered steps' names, in the atlas's order."""
    return tuple(step.name for step in registered_steps())


def _find_builtin() -> None:
    """Import each module of `massact.atlas.steps` once: each registers its step."""
    global _builtin_found
    if _builtin_found:
        return
    from massact.atlas import steps

    for info in pkgutil.iter_modules(steps.__path__, f"{steps.__name__}."):
        importlib.import_module(info.name)
    _builtin_found = True
