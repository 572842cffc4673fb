"""`StreamConfig`: the policies, the cache size W, where scoring starts, how positions are assigned."""

from __future__ import annotations

from dataclasses import dataclass, field

from massact.defaults import DEFAULT_POLICIES
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.stream.policy import POLICY_HELP, POSITIONS, Policy, parse_policies
from massact.validate import at_least


@dataclass(frozen=True)
class StreamConfig:
    """A streaming run: the policies, the cache size W, where scoring starts, how positions are assigned.

    `score_from`: the first stream token whose prediction is scored (default 2 x cache + 1, so every
    bounded policy has been evicting for a while); `stride`: recompute scores this many predictions per
    fresh forward; `max_detected`: at most this many detected tokens (and fewer than `cache`) are kept
    for the whole stream.
    """

    #: the cache policies (`parse_policies`): full, window, sinks:N, detected, recompute
    policies: tuple[Policy, ...] = field(default_factory=lambda: parse_policies(DEFAULT_POLICIES))
    cache: int = 128  # the cache size W (tokens kept)
    score_from: int | None = None  # first scored stream token (default 2 x cache + 1)
    positions: str = "original"  # "original": each token keeps its position; "cache": its slot in the cache
    stride: int = 1  # predictions per fresh forward (scores recomputed every `stride`)
    max_detected: int = 8  # at most this many detected tokens kept (fewer than `cache`)
    thresholds: Thresholds = Thresholds()  # the criterion that detects the tokens to keep
    progress: bool = True  # a progress bar on a terminal
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself

    def __post_init__(self) -> None:
        if isinstance(self.policies, (str, list)) or (
            isinstance(self.policies, tuple) and any(isinstance(p, str) for p in self.policies)
        ):
            object.__setattr__(self, "policies", parse_policies(self.policies))
        if not self.policies:
            raise MassactError(f"`policies` is empty; {POLICY_HELP}")
        at_least("cache", self.cache, 2)
        sinks = max((p.sinks for p in self.policies), default=0)
        if sinks >= self.cache:
            raise MassactError(
                f"`cache={self.cache}` is not larger than sinks:{sinks}; give a cache larger than the sink count"
            )
        if self.score_from is not None:
            at_least("score_from", self.score_from, 1, "token 0 has no prediction")
        if self.positions not in POSITIONS:
            raise MassactError(f"`positions={self.positions!r}`: use original or cache")
        if self.stride < 1 or self.stride > self.cache:
            raise MassactError(f"`stride={self.stride}`: must be between 1 and `cache={self.cache}`")
        at_least("max_detected", self.max_detected)
        if not isinstance(self.thresholds, Thresholds):
            raise MassactError("`thresholds` must be a massact.detect.Thresholds")

    def first_scored(self) -> int:
        return 2 * self.cache + 1 if self.score_from is None else self.score_from

    def check_tokens(self, tokens: int) -> None:
        """Refuse a stream of `tokens` tokens in which nothing would be scored."""
        if self.first_scored() >= tokens:
            raise MassactError(f"`score_from={self.first_scored()}` leaves nothing to score in `tokens={tokens}`")
