"""Forward hooks that always come off again."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

HookFn = Callable[[nn.Module, tuple, object], object]


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
