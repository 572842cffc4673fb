"""What a streaming run compares: cache policies, parsed from their names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from massact.defaults import DEFAULT_POLICIES as DEFAULT_POLICIES
from massact.errors import MassactError

KINDS = ("full", "window", "sinks", "detected", "recompute")
POSITIONS = ("original", "cache")
BITS = (4, 8)
_SPEC = re.compile(r"^(full|window|detected|recompute|sinks:(\d+))(?:@int(\d+)(\+sinks)?)?$")
POLICY_HELP = (
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
            raise MassactError(f"unknown policy {spec!r}; {POLICY_HELP}")
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
        raise MassactError(f"`policies` is empty; {POLICY_HELP}")
    policies = [Policy.parse(s) for s in items]
    names = [p.name for p in policies]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MassactError(f"`policies` names {', '.join(repeated)} more than once; list each policy once")
    return tuple(policies)
