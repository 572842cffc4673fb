"""`InterventionConfig`: every knob of an intervention run, with its default, checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field

from massact.defaults import MODES
from massact.errors import MassactError
from massact.interventions.means import SiteMeans
from massact.interventions.sites import SiteSpec
from massact.tasks import TaskConfig
from massact.validate import at_least, given


def parse_modes(text: str) -> list[str]:
    """`modes` text "original,zero" as a list of modes (each once)."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise MassactError(
            f"{given('modes', text)}: unknown mode {', '.join(unknown) or '(none)'}; use {','.join(MODES)}"
        )
    return list(dict.fromkeys(modes))


def parse_ints(text: str | None, name: str) -> tuple[int, ...] | None:
    """Text "3,7" given as parameter `name` as a tuple of integers (None when not given)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise MassactError(f"{given(name, text)}: give comma-separated integers, e.g. '0,3'") from None
    if not values:
        raise MassactError(f"{given(name, text)}: give at least one integer")
    return values


def parse_block(spec: str) -> tuple[int, bool]:
    """`block` "L" or "L-" as (L, onward); the range is checked against the model later."""
    text = spec.strip()
    onward = text.endswith("-")
    try:
        start = int(text[:-1] if onward else text)
    except ValueError:
        raise MassactError(f"{given('block', spec)}: give a block index L, or L- for blocks L to the last") from None
    if start < 0:
        raise MassactError(f"{given('block', spec)}: block indices start at 0")
    return start, onward


def resolve_blocks(spec: str | None, num_blocks: int, default: int | None) -> list[int]:
    """`spec` None (the `default` block: where the largest massive activation first appears), "L" or "L-"
    (L to the last block) as block indices."""
    if spec is None:
        if default is None:
            raise MassactError(
                "no massive activations found on the surveyed windows, so there is no default block; "
                "give `block` (and `sites.dims`/`sites.tokens`), or lower `thresholds.ratio`"
            )
        return [default]
    start, onward = parse_block(spec)
    if not 0 <= start < num_blocks:
        raise MassactError(f"{given('block', spec)} is out of range; the model has blocks 0..{num_blocks - 1}")
    return list(range(start, num_blocks)) if onward else [start]


@dataclass(frozen=True)
class InterventionConfig:
    """What one intervention run does: which windows, which blocks and sites, which modes."""

    corpora: tuple[str, ...] = ("shakespeare",)  # corpus names or text-file paths, each evaluated
    samples: int = 16  # windows evaluated per corpus
    seq_len: int = 512  # tokens per window, the tokenizer's prefix (BOS) included
    block: str | None = None  # None: where the largest massive activation first appears; "L"; or "L-" (L..last)
    modes: tuple[str, ...] = MODES  # any of original, zero, mean, random (each once, in this order)
    sites: SiteSpec = field(default_factory=SiteSpec)  # which (token, dim) sites are rewritten; default: detected
    means: SiteMeans | None = None  # from a file; else computed on `means_samples` held-out windows
    means_samples: int = 32  # held-out windows the `mean` mode's means are computed on
    seed: int = 0  # which windows are drawn
    seeds: int = 1  # with N > 1, the whole run repeated on windows drawn with seeds seed..seed+N-1
    batch_size: int = 8  # windows per forward pass
    add_special_tokens: bool = True  # windows start as the tokenizer starts a text (its BOS)
    progress: bool = True  # progress lines on a terminal
    tasks: TaskConfig | None = None  # zero-shot tasks through lm-eval, once per mode
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself

    def __post_init__(self) -> None:
        corpora = tuple(dict.fromkeys(c.strip() for c in self.corpora if c and c.strip()))
        if not corpora:
            raise MassactError("`corpora` is empty; give a corpus name or path, e.g. `corpora=('shakespeare',)`")
        object.__setattr__(self, "corpora", corpora)
        modes = tuple(parse_modes(",".join(self.modes)))
        object.__setattr__(self, "modes", modes)
        for name, least in (("samples", 1), ("seq_len", 2), ("means_samples", 1), ("batch_size", 1), ("seeds", 1)):
            at_least(name, getattr(self, name), least)
        if self.block is not None:
            parse_block(self.block)
        self.sites.check(None, self.seq_len)
