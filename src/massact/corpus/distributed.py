"""Data-parallel corpus scans: `accelerate launch -m massact scan ...` (or torchrun) splits the sequences.

Each process scans its share of the windows; the summaries are gathered and merged on every process,
and the main one alone writes output. The merge is exact, so the result equals a one-process run.
"""

from __future__ import annotations

import os
from datetime import timedelta
from functools import reduce

from massact.corpus.summary import CorpusSummary
from massact.errors import MassactError

TIMEOUT = timedelta(minutes=30)


def launched_distributed() -> bool:
    """True when started by accelerate launch / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(device: str | None):
    """The accelerate process state (initializes torch.distributed: gloo on CPU, nccl on GPU)."""
    from accelerate import PartialState

    try:
        return PartialState(cpu=device == "cpu", timeout=TIMEOUT)
    except Exception as exc:  # a broken launch environment
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MassactError(f"could not join the distributed run ({first}); check the launcher's settings") from None


def launch_device(device: str | None, device_map: str | None, shard_of: tuple[int, int] | None = None) -> str | None:
    """The device this process loads the model on: its own under a data-parallel launch, else `device`.

    Checked before the model loads: a launch does not combine with `device_map` or `shard_of`.
    """
    if not launched_distributed():
        return device
    if device_map is not None:
        raise MassactError("`device_map` does not combine with a data-parallel launch; drop one of them")
    if shard_of is not None:
        raise MassactError("`shard_of` splits a run by hand; a data-parallel launch splits it already: drop one")
    state = process_state(device)
    if state.num_processes > 1:
        device = "cpu" if state.device.type == "cpu" else str(state.device)  # 'cpu:0' would pick bf16
    return device


def launch_state():
    """The process state of a data-parallel launch (the one `launch_device` joined), else None."""
    return process_state(None) if launched_distributed() else None


def wait_for_everyone() -> None:
    """Under a data-parallel launch, wait until every process gets here (the main one has written)."""
    if launched_distributed():
        process_state(None).wait_for_everyone()


def shard(count: int, rank: int, world: int) -> range:
    """Contiguous share of `count` items for process `rank` of `world` (sizes differ by at most one)."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def gather_summaries(summary: CorpusSummary | None) -> CorpusSummary | None:
    """Merge every process's summary; every process gets the merged one."""
    from accelerate.utils import gather_object

    parts = [p for p in gather_object([summary]) if p is not None]
    return reduce(CorpusSummary.merge, parts).canonical() if parts else None
