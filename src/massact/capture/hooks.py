"""Forward hooks that always come off again."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn

HookFn = Callable[[nn.Module, tuple, object], object]
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, list[HookSet]] = weakref.WeakKeyDictionary()
KwargsHookFn = Callable[[nn.Module, tuple, dict, object], object]  # a forward hook that also gets the kwargs


def output_tensor(output: object) -> torch.Tensor:
    """The hidden-state tensor inside a module's output (a tensor, or the first item of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(output).__name__}")


def replace_output_tensor(output: object, tensor: torch.Tensor) -> object:
    """`output` with its hidden-state tensor replaced by `tensor` (same container type)."""
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    raise TypeError(f"cannot replace the hidden state in a module output of type {type(output).__name__}")


@contextmanager
def forward_hooks(pairs: Iterable[tuple[nn.Module, HookFn]]) -> Iterator[None]:
    """Register `hook` on each `module` for the duration of the block; removed even on error."""
    handles = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def forward_pre_hook(module: nn.Module, hook: Callable, with_kwargs: bool = True) -> Iterator[None]:
    """Register one forward pre-hook (with kwargs) for the duration of the block."""
    handle = module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)
    try:
        yield
    finally:
        handle.remove()


class HookSet:
    """A set of hooks on one model, used as a context manager: registered on enter, removed on exit.

    The base hooks the model's own forward (a kwargs pre-hook) to remember the call's `input_ids`
    and 2-D `attention_mask`, which block hooks need to skip padding or to know token kinds.
    Subclasses list their hooks in `forward_hooks()` (`kwargs_hooks()` for forward hooks that need the call's
    kwargs, `pre_hooks()` for kwargs pre-hooks);
    everything comes off on exit, also on error.

    `per_forward` names the attributes that hold one forward pass's state (read back after that pass):
    when a model runs block by block, every window reaches block i before any reaches block i + 1, so
    the runner keeps these apart per batch (`forward_state` / `restore_forward_state`). Everything else a
    hook set holds accumulates over passes, module by module, in the same batch order either way.
    """

    per_forward: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.input_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        self._handles: list = []

    def forward_hooks(self) -> Iterable[tuple[nn.Module, HookFn]]:
        return ()

    def kwargs_hooks(self) -> Iterable[tuple[nn.Module, KwargsHookFn]]:
        """(module, hook(module, args, kwargs, output)) pairs, registered with kwargs."""
        return ()

    def pre_hooks(self) -> Iterable[tuple[nn.Module, Callable]]:
        """(module, hook(module, args, kwargs)) pairs, registered with kwargs."""
        return ()

    def _grab_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        mask = kwargs.get("attention_mask")
        self.input_ids = ids if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None
        self.attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def valid_mask(self, batch: int, tokens: int, device: torch.device) -> torch.Tensor | None:
        """Bool [batch, tokens] of real (non-padding) positions, or None when every position is real."""
        mask = self.attention_mask
        if mask is None or tuple(mask.shape) != (batch, tokens):
            return None
        return mask.to(device=device, dtype=torch.bool)

    def forward_state(self) -> dict[str, object]:
        """The current values of the `per_forward` attributes."""
        return {name: getattr(self, name) for name in self.per_forward}

    def fresh_forward_state(self) -> dict[str, object]:
        """A copy of the `per_forward` attributes as they are now (before any pass): a new batch's start."""
        return copy.deepcopy(self.forward_state())

    def restore_forward_state(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def __enter__(self) -> HookSet:
        try:
            _ACTIVE.setdefault(self.model, []).append(self)
            self._handles.append(self.model.register_forward_pre_hook(self._grab_inputs, with_kwargs=True))
            for module, hook in self.pre_hooks():
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            for module, hook in self.forward_hooks():
                self._handles.append(module.register_forward_hook(hook))
            for module, hook in self.kwargs_hooks():
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        active = _ACTIVE.get(self.model, [])
        if self in active:
            active.remove(self)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.input_ids = self.attention_mask = None


def active_hook_sets(model: nn.Module) -> list[HookSet]:
    """The hook sets entered on `model` and not yet left, in the order they were entered."""
    return list(_ACTIVE.get(model, []))
