"""Blocks in words for reports and messages: '11-27', 'block 28', 'blocks 3,5-7'."""

from __future__ import annotations

from collections.abc import Sequence


def blocks_span(blocks: Sequence[int]) -> str:
    """'11-27' for a run of consecutive blocks, else '3,5-7,9'."""
    blocks = sorted(blocks)
    if not blocks:
        return ""
    runs, start, prev = [], blocks[0], blocks[0]
    for b in [*blocks[1:], None]:
        if b is None or b != prev + 1:
            runs.append(f"{start}-{prev}" if prev > start else str(start))
            start = b
        prev = b if b is not None else prev
    return ",".join(runs)


def blocks_phrase(blocks: Sequence[int]) -> str:
    """'block 28' for one block, 'blocks 11-27' (or '3,5-7') for several."""
    return f"{'block' if len(set(blocks)) == 1 else 'blocks'} {blocks_span(blocks)}"
