"""`AttentionConfig`: what an attention analysis measures and keeps, checked when made."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from massact.detect import Thresholds
from massact.errors import MassactError


@dataclass(frozen=True)
class AttentionConfig:
    """What to measure and keep."""

    threshold: float = 0.3  # sink-head threshold on the first token's importance
    block: int | None = None  # heatmap block (default: the first block whose input carries massive activations)
    logits: bool = False  # also keep the heatmap block's pre-softmax logits
    intervene: bool = True  # measure the block-output change when the C part is replaced by its mean
    keep_maps: Sequence[int] = ()  # blocks whose full per-head maps are kept (all blocks: range(num_blocks))
    display_tokens: int = 64  # heatmap size (the top-left corner of the map)
    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion that finds the massive tokens
    sinks: Sequence[int] | None = None  # the token positions C, chosen by hand; default: massact's detection
    max_memory: int | None = None  # bytes allowed for one attention map (default: what is available)
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself (`run` only)

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise MassactError(f"`threshold={self.threshold}`: the sink threshold is a probability in (0, 1)")
        if self.block is not None and self.block < 0:
            raise MassactError(f"`block={self.block}`: give a block index (0 or more)")
        if self.display_tokens < 2:
            raise MassactError(f"`display_tokens={self.display_tokens}`: show at least 2 tokens")
        if self.sinks is not None and any(s < 0 for s in self.sinks):
            raise MassactError(f"`sinks={list(self.sinks)}`: positions are 0 or more")
        if not isinstance(self.thresholds, Thresholds):
            raise MassactError("thresholds must be a massact.detect.Thresholds")
