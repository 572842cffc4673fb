"""Drive a model's own forward pass one block at a time over every batch: `run_blockwise`.

Stage i reads block i from the checkpoint and runs every batch through the model's own `forward`, with the
blocks before i standing in by replaying block i - 1's output for that batch, and the block after i stopping
the pass (so the model still computes its masks, positions and rotary embeddings itself: no copied forward).
Stage 0 also reads the input embedding; the last stage also the head, and hands each batch's output to
`consume`. Between stages each batch's block output is kept in memory while the budget allows and in a
memory-mapped file in the offload folder when not. Hooks see every module once per batch, in block order,
as in memory; the per-pass state of the active hook sets (`HookSet.per_forward`) is kept per batch.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from massact.capture.hooks import active_hook_sets
from massact.models.memory import gib
from massact.models.offload import BlockOffload, Resident
from massact.progress import console, steps

Batch = dict[str, object]


class _Halt(BaseException):
    """Raised by the stand-in of the block after the one a stage runs: the rest of the pass is not needed."""


class _StandIn(nn.Module):
    """Takes the place of a block in its list for one stage; attribute reads go to the block."""

    def __init__(self, block: nn.Module, forward: Callable[..., object]) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_run", forward)

    def forward(self, *args, **kwargs):
        return self._run(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


def _halt(*args, **kwargs):
    raise _Halt


class _Zeros(nn.Module):
    """Stands in for the input embedding after stage 0: the blocks before the current one ignore its output."""

    def __init__(
        self, embedding: nn.Module, shape: Callable[[], tuple[torch.Size, torch.dtype]], device: torch.device
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_embedding", embedding)
        object.__setattr__(self, "_shape", shape)
        object.__setattr__(self, "_device", device)

    def forward(self, *args, **kwargs):
        size, dtype = self._shape()
        return torch.zeros(size, dtype=dtype, device=self._device)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_embedding"), name)


def _main_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _with_main(output: object, tensor: torch.Tensor) -> object:
    if isinstance(output, torch.Tensor) or output is None:
        return tensor
    return type(output)((tensor, *output[1:]))


class ActivationStore:
    """Each batch's block output between stages: in memory within `budget` bytes, else in a file."""

    def __init__(self, budget: int, folder: Path) -> None:
        self.budget = budget
        self.folder = folder
        self.in_memory = 0
        self.spilled = 0
        self._items: dict[int, tuple[object, int, Path | None, tuple]] = {}

    def put(self, batch: int, output: object, generation: int) -> None:
        self.drop(batch)
        main = _main_tensor(output)
        size = 0 if main is None else main.numel() * main.element_size()
        if main is None or self.in_memory + size <= self.budget:
            self._items[batch] = (output, size, None, ())
            self.in_memory += size
            return
        path = self.folder / f"g{generation}-b{batch}.bin"
        flat = main.detach().contiguous().cpu()
        flat.view(torch.uint8).numpy().tofile(path)
        self._items[batch] = (_with_main(output, None), size, path, (main.shape, main.dtype, main.device))
        self.spilled += 1

    def get(self, batch: int) -> object:
        output, size, path, where = self._items[batch]
        if path is None:
            return output
        shape, dtype, device = where
        data = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
        return _with_main(output, data.view(dtype).reshape(shape).to(device))

    def drop(self, batch: int) -> None:
        item = self._items.pop(batch, None)
        if item is None:
            return
        _, size, path, _ = item
        if path is None:
            self.in_memory -= size
        else:
            path.unlink(missing_ok=True)

    def clear(self) -> None:
        for batch in list(self._items):
            self.drop(batch)


def _shape_of(output: object) -> tuple[torch.Size, torch.dtype]:
    main = _main_tensor(output)
    assert main is not None
    return main.shape, main.dtype


def run_blockwise(
    offload: BlockOffload,
    batches: Sequence[Batch],
    consume: Callable[[int, object], None] | None = None,
    description: str = "forward",
    progress: bool = True,
) -> object:
    """Every batch through the model, block by block; `consume(i, output)` gets each batch's model output.

    Returns the last batch's output. Each batch is a dict of the model's keyword arguments
    (`input_ids`, `attention_mask`, ...), already on the offload device.
    """
    model = offload.model
    structure = offload.structure
    container = model.get_submodule(structure.blocks_path) if structure.blocks_path else model
    blocks = list(structure.blocks)
    count = len(blocks)
    trunk, embedding, head = offload.parts()
    hook_sets = active_hook_sets(model)
    fresh = {id(h): h.fresh_forward_state() for h in hook_sets}
    states: list[dict[int, dict]] = [{} for _ in batches]
    shapes: dict[int, tuple[torch.Size, torch.dtype]] = {}
    current = {"batch": 0}
    block_size = offload.block_bytes()
    fixed = offload.bytes_of(trunk, recurse=False) + offload.bytes_of([m for m in (embedding, head) if m])
    double = offload.budget >= fixed + 2 * block_size
    store_budget = max(0, offload.budget - fixed - (2 if double else 1) * block_size)
    folder = Path(tempfile.mkdtemp(prefix="activations-", dir=offload.checkpoint.folder))
    store = ActivationStore(store_budget, folder)
    last_output: object = None
    trunk_resident = Resident()
    embedding_name = _child_name(model, embedding)
    captured: dict[str, object] = {}
    future = None
    with steps(count * len(batches), f"{description} (block 1/{count})", unit="batches", enabled=progress) as shown:
        try:
            trunk_resident = offload.load(trunk, recurse=False)
            for index in range(count):
                shown.describe(f"{description} (block {index + 1}/{count})")
                values = future.result() if future is not None else offload.read([blocks[index]])
                future = None
                parts: list[nn.Module] = []
                if index == 0 and embedding is not None:
                    parts.append(embedding)
                if index == count - 1 and head is not None:
                    parts.append(head)
                values.update(offload.read(parts))
                resident = offload.place(values)
                del values  # the model holds them now: freeing `resident` must free them
                if index + 1 < count and double:
                    future = offload.prefetch([blocks[index + 1]])
                handle = blocks[index].register_forward_hook(lambda m, a, out: captured.__setitem__("out", out))
                originals = _stand_in(container, blocks, index, current)
                restore_embedding = None
                if index > 0 and embedding_name is not None:
                    restore_embedding = _swap_module(
                        model, embedding_name, _Zeros(embedding, lambda: shapes[current["batch"]], offload.device)
                    )
                recorder = (
                    embedding.register_forward_hook(
                        lambda m, a, out: shapes.__setitem__(current["batch"], _shape_of(out))
                    )
                    if index == 0 and embedding is not None
                    else None
                )
                try:
                    for number, batch in enumerate(batches):
                        current["batch"] = number
                        for hooks in hook_sets:
                            hooks.restore_forward_state(states[number].get(id(hooks)) or _copy(fresh[id(hooks)]))
                        captured.clear()
                        current["replay"] = store.get(number) if index > 0 else None
                        try:
                            with torch.no_grad():
                                output = model(**batch)
                        except _Halt:
                            output = None
                        for hooks in hook_sets:
                            states[number][id(hooks)] = hooks.forward_state()
                        if index == count - 1:
                            store.drop(number)
                            last_output = output
                            if consume is not None:
                                consume(number, output)
                        else:
                            store.put(number, captured.get("out"), index)
                        shown.advance(1)
                finally:
                    handle.remove()
                    if recorder is not None:
                        recorder.remove()
                    for position, block in originals:
                        container[position] = block
                    if restore_embedding is not None:
                        restore_embedding()
                    offload.free(resident)
        finally:
            if future is not None:  # a read under way: wait for it, and drop what it read
                future.exception()
            offload.free(trunk_resident)
            store.clear()
            shutil.rmtree(folder, ignore_errors=True)
    if store.spilled and progress:
        console.print(
            f"{description}: block outputs went to disk {store.spilled} times "
            f"(over the {gib(store_budget)} left for them)"
        )
    return last_output


def _copy(state: dict) -> dict:
    import copy

    return copy.deepcopy(state)


def _stand_in(container: nn.Module, blocks: list[nn.Module], index: int, current: dict) -> list[tuple[int, nn.Module]]:
    """Put stand-ins in `container` for every block but `index`; the originals to put back."""
    originals = []
    replay = lambda *args, **kwargs: current["replay"]  # noqa: E731
    for position, block in enumerate(blocks):
        if position == index:
            continue
        container[position] = _StandIn(block, replay if position < index else _halt)
        originals.append((position, block))
    return originals


def _child_name(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    for name, child in model.named_modules():
        if child is module:
            return name
    return None


def _swap_module(model: nn.Module, name: str, replacement: nn.Module) -> Callable[[], None]:
    """Set submodule `name` of `model` to `replacement`; returns what puts the original back."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = parent._modules[child]
    parent._modules[child] = replacement

    def restore() -> None:
        parent._modules[child] = original

    return restore
