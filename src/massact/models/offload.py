"""Block-by-block weights: a meta-device model whose tensors are read from its checkpoint part by part.

`BlockOffload` holds where a model's tensors are (`Checkpoint`) and puts them in place one module at a time:
each meta parameter is swapped for the real tensor (`torch.utils.swap_tensors`, so the parameter object,
its hooks and its ties stay the same) and swapped back to meta when the part is freed. Weight edits an
analysis makes (a simulated quantizer, a zeroed entry) are registered here and applied to each tensor as it
is read. `capture.blockwise` drives the forward pass with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from massact.models.checkpoint import Checkpoint
from massact.models.memory import module_bytes, return_freed_memory
from massact.models.structure import Structure, find_structure

Edit = Callable[[torch.Tensor], torch.Tensor]
_OFFLOADS: weakref.WeakKeyDictionary[nn.Module, BlockOffload] = weakref.WeakKeyDictionary()


def offload_of(model: nn.Module) -> BlockOffload | None:
    """The block offload of `model` when it runs block by block, else None."""
    return _OFFLOADS.get(model)


@dataclass
class Resident:
    """Tensors put in place by `BlockOffload.load`: (the parameter or buffer's owner, name, the swapped-out meta)."""

    swapped: list[tuple[nn.Module, str, torch.Tensor]] = field(default_factory=list)
    nbytes: int = 0


@dataclass
class _Entry:
    owner: nn.Module
    name: str
    key: str  # its name in the checkpoint
    is_parameter: bool


class BlockOffload:
    """Read the parts of a meta-device model from its checkpoint onto `device`, one at a time."""

    def __init__(
        self, model: nn.Module, checkpoint: Checkpoint, device: torch.device, budget: int, structure: Structure
    ) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.budget = budget
        self.structure = structure
        self.edits: dict[int, list[Edit]] = {}
        self._entries = self._meta_entries()
        self._pool: ThreadPoolExecutor | None = None
        for module in model.modules():  # buffers computed at build time (rotary caches, scales) go to the device
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and not buffer.is_meta and buffer.device != self.device:
                    module._buffers[name] = buffer.to(self.device)
        _OFFLOADS[model] = self

    @classmethod
    def attach(cls, model: nn.Module, checkpoint: Checkpoint, device: torch.device, budget: int) -> BlockOffload:
        return cls(model, checkpoint, device, budget, find_structure(model))

    @property
    def dtype(self) -> torch.dtype:
        floats = [p.dtype for p in self.model.parameters() if p.is_floating_point()]
        return max(set(floats), key=floats.count) if floats else torch.float32

    def _meta_entries(self) -> dict[int, _Entry]:
        """id(tensor) -> where it sits in the model and its checkpoint key, for every meta tensor (ties once)."""
        entries: dict[int, _Entry] = {}
        for module_name, module in self.model.named_modules(remove_duplicate=False):
            prefix = f"{module_name}." if module_name else ""
            for store, is_parameter in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in store.items():
                    if tensor is None or not tensor.is_meta:
                        continue
                    key = prefix + name
                    known = entries.get(id(tensor))
                    if known is None or (known.key not in self.checkpoint.index and key in self.checkpoint.index):
                        entries[id(tensor)] = _Entry(module, name, key, is_parameter)
        return entries

    # --- parts of the model ---------------------------------------------------------------------------------

    def parts(self) -> tuple[list[nn.Module], nn.Module | None, nn.Module | None]:
        """(the trunk's modules, the input embedding, the output head): everything outside the blocks."""
        embedding = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        inside = {id(m) for block in self.structure.blocks for m in block.modules()}
        for part in (embedding, head):
            if part is not None:
                inside.update(id(m) for m in part.modules())
        trunk = [m for m in self.model.modules() if id(m) not in inside]
        return trunk, embedding, head

    def bytes_of(self, modules: Iterable[nn.Module], recurse: bool = True) -> int:
        tensors = {}
        for module in modules:
            for tensor in [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]:
                tensors[id(tensor)] = tensor.numel() * tensor.element_size()
        return sum(tensors.values())

    def block_bytes(self) -> int:
        return max(module_bytes(block) for block in self.structure.blocks)

    def read_like(self, tensor: torch.Tensor, owner: nn.Module, name: str, source: torch.Tensor) -> None:
        """Read the meta `tensor`, now `owner.<name>`, from the checkpoint tensor `source` is read from (a tie undone
        for a while: `models.edits.untied`); `forget` it after."""
        entry = self._entries[id(source)]
        self._entries[id(tensor)] = _Entry(owner, name, entry.key, entry.is_parameter)

    def forget(self, tensor: torch.Tensor) -> None:
        """Stop reading `tensor` (registered by `read_like`), and drop its edits."""
        self._entries.pop(id(tensor), None)
        self.edits.pop(id(tensor), None)

    # --- reading and freeing ---------------------------------------------------------------------------------

    def _pending(self, modules: Iterable[nn.Module], recurse: bool) -> list[tuple[int, torch.Tensor]]:
        seen: dict[int, torch.Tensor] = {}
        for module in modules:
            for tensor in [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]:
                if tensor.is_meta and id(tensor) in self._entries:
                    seen[id(tensor)] = tensor
        return list(seen.items())

    def read(self, modules: Iterable[nn.Module], recurse: bool = True) -> dict[int, torch.Tensor]:
        """The real tensors of `modules`'s meta tensors, on the device with edits applied (not yet in place)."""
        pending = self._pending(modules, recurse)
        keys = {self._entries[i].key: t.dtype for i, t in pending}
        values = self.checkpoint.read(keys, keys)
        pin = self.device.type == "cuda"
        out = {}
        for i, _ in pending:
            value = values[self._entries[i].key]
            if pin:
                value = value.pin_memory().to(self.device, non_blocking=True)
            elif value.device != self.device:
                value = value.to(self.device)
            for edit in self.edits.get(i, ()):
                value = edit(value)
            out[i] = value
        if pin:
            torch.cuda.current_stream(self.device).synchronize()
        return out

    def prefetch(self, modules: list[nn.Module]) -> Future:
        """`read(modules)` in a background thread (double buffering): pass its result to `place`."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="massact-read")
        return self._pool.submit(self.read, modules)

    def place(self, values: dict[int, torch.Tensor]) -> Resident:
        """Put read tensors in place of their meta tensors; `free` the result to swap them back."""
        resident = Resident()
        try:
            for i, value in values.items():
                entry = self._entries[i]
                store = entry.owner._parameters if entry.is_parameter else entry.owner._buffers
                meta = store[entry.name]
                if meta is None or not meta.is_meta:
                    continue
                if entry.is_parameter:
                    real = nn.Parameter(value, requires_grad=meta.requires_grad)
                    torch.utils.swap_tensors(meta, real)  # `meta` (the model's object) now holds the data
                    resident.swapped.append((entry.owner, entry.name, real))
                else:
                    store[entry.name] = value
                    resident.swapped.append((entry.owner, entry.name, meta))
                resident.nbytes += value.numel() * value.element_size()
        except BaseException:
            self.free(resident)
            raise
        return resident

    def load(self, modules: Iterable[nn.Module], recurse: bool = True) -> Resident:
        return self.place(self.read(modules, recurse))

    def free(self, resident: Resident) -> None:
        """Swap the tensors `load` put in place back to meta, which frees them."""
        for owner, name, held in reversed(resident.swapped):
            if name in owner._parameters:
                torch.utils.swap_tensors(owner._parameters[name], held)
            else:
                owner._buffers[name] = held
        resident.swapped.clear()
        resident.nbytes = 0
        return_freed_memory()

    @contextmanager
    def materialized(self, modules: Iterable[nn.Module]) -> Iterator[None]:
        """`modules`'s weights in place inside the block (for an analysis that reads weights, not activations)."""
        resident = self.load(list(modules))
        try:
            yield
        finally:
            self.free(resident)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


@contextmanager
def materialized(model: nn.Module, modules: Iterable[nn.Module]) -> Iterator[None]:
    """`modules`'s weights readable inside the block, whether the model runs in memory or block by block."""
    offload = offload_of(model)
    if offload is None:
        yield
        return
    with offload.materialized(modules):
        yield
