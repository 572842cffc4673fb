"""What a streaming run compares: cache policies, parsed from their names, and the run's knobs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from massact.defaults import DEFAULT_POLICIES as DEFAULT_POLICIES
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.validate import at_least

KINDS = ("full", "window", "sinks", "detected", "recompute")
POSITIONS = ("original", "cache")
BITS = (4, 8)
_SPEC = re.compile(r"^(full|window|detected|recompute|sinks:(\d+))(?:@int(\d+)(\+sinks)?)?$")
_HELP = (
    "use full, window, sinks:N, detected or recompute, optionally with @int4 / @int8 (quantized KV cache) "
    "or @int4+sinks / @int8+sinks (sink tokens kept in full precision)"
)


@dataclass(frozen=True)
class Policy:
    """One way to bound the KV cache: which tokens stay, and how the cached keys and values are stored.

        `kind`: full (keep everything), window (the most recent tokens), sinks (the first `sinks` tokens plus
        the most recent), detected (the tokens found carrying massive activations, outlier features left out,
    plus the most recent),
        recompute (every prediction from a fresh forward over the most recent tokens). `bits`: the cached keys
        and values quantized to this many bits (None: as computed); `fp_sinks`: the sink tokens (the policy's
        kept tokens; for full and window the detected ones) stay in full precision.
    """

    kind: str
    sinks: int = 0
    bits: int | None = None
    fp_sinks: bool = False

    @property
    def name(self) -> str:
        base = f"sinks:{self.sinks}" if self.kind == "sinks" else self.kind
        if self.bits is None:
            return base
        return f"{base}@int{self.bits}" + ("+sinks" if self.fp_sinks else "")

    @property
    def needs_detection(self) -> bool:
        return self.kind == "detected" or (self.fp_sinks and self.kind in ("full", "window"))

    @classmethod
    def parse(cls, spec: str) -> Policy:
        match = _SPEC.match(spec.strip())
        if match is None:
            raise MassactError(f"unknown policy {spec!r}; {_HELP}")
        head, sinks, bits, fp = match.groups()
        kind = "sinks" if sinks is not None else head
        if kind == "sinks" and int(sinks) < 1:
            raise MassactError(f"policy {spec!r}: sinks:N needs N >= 1 (use window for no sinks)")
        if bits is not None and int(bits) not in BITS:
            raise MassactError(f"policy {spec!r}: the KV cache can be quantized to 4 or 8 bits, not {bits}")
        if bits is not None and kind == "recompute":
            raise MassactError(f"policy {spec!r}: recompute keeps no cache to quantize; drop the @int suffix")
        return cls(kind=kind, sinks=int(sinks or 0), bits=int(bits) if bits else None, fp_sinks=fp is not None)


def parse_policies(specs: str | tuple[str, ...] | list[str]) -> tuple[Policy, ...]:
    """Policies from a comma-separated string or a list of names, in order, without repeats."""
    items = [s for s in (specs.split(",") if isinstance(specs, str) else specs) if s.strip()]
    if not items:
        raise MassactError(f"--policies is empty; {_HELP}")
    policies = [Policy.parse(s) for s in items]
    names = [p.name for p in policies]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MassactError(f"--policies names {', '.join(repeated)} more than once; list each policy once")
    return tuple(policies)


@dataclass(frozen=True)
class StreamConfig:
    """A streaming run: the policies, the cache size W, where scoring starts, how positions are assigned.

    `score_from`: the first stream token whose prediction is scored (default 2 x cache + 1, so every
    bounded policy has been evicting for a while); `stride`: recompute scores this many predictions per
    fresh forward; `max_detected`: at most this many detected tokens (and fewer than `cache`) are kept
    for the whole stream.
    """

    policies: tuple[Policy, ...] = field(default_factory=lambda: parse_policies(DEFAULT_POLICIES))
    cache: int = 128
    score_from: int | None = None
    positions: str = "original"
    stride: int = 1
    max_detected: int = 8
    thresholds: Thresholds = Thresholds()
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.policies, (str, list)) or (
            isinstance(self.policies, tuple) and any(isinstance(p, str) for p in self.policies)
        ):
            object.__setattr__(self, "policies", parse_policies(self.policies))
        if not self.policies:
            raise MassactError(f"--policies is empty; {_HELP}")
        at_least("--cache", self.cache, 2)
        sinks = max((p.sinks for p in self.policies), default=0)
        if sinks >= self.cache:
            raise MassactError(
                f"--cache {self.cache} is not larger than sinks:{sinks}; give a cache larger than the sink count"
            )
        if self.score_from is not None:
            at_least("--score-from", self.score_from, 1, "token 0 has no prediction")
        if self.positions not in POSITIONS:
            raise MassactError(f"--positions {self.positions!r}: use original or cache")
        if self.stride < 1 or self.stride > self.cache:
            raise MassactError(f"--stride {self.stride}: must be between 1 and --cache {self.cache}")
        at_least("max_detected", self.max_detected)
        if not isinstance(self.thresholds, Thresholds):
            raise MassactError("thresholds must be a massact.detect.Thresholds")

    def first_scored(self) -> int:
        return 2 * self.cache + 1 if self.score_from is None else self.score_from
