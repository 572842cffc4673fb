"""The intervention experiment: perplexity per mode and corpus with the massive activations rewritten.

For each corpus, `samples` windows are evaluated once per mode. Held-out windows of the first corpus
(the next ones in the same seeded order, so never the evaluated ones) are surveyed first: they give the
block map, the default block (where the massive activations first appear) and, for `mean`, the means
(unless a means file is given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from massact.errors import MassactError
from massact.interventions.hooks import MODES, SiteMeans, SiteSpec, TokenKinds, blocks_span, intervene
from massact.interventions.perplexity import evaluate_perplexity
from massact.interventions.survey import Survey, survey
from massact.models.loading import LoadedModel
from massact.models.structure import Structure, find_structure

SURVEY_SAMPLES = 8
AFTER_ZERO_SAMPLES = 4


@dataclass
class InterventionConfig:
    """Everything one `massact intervene` run is asked to do."""

    corpora: list[str] = field(default_factory=lambda: ["shakespeare"])
    samples: int = 16
    seq_len: int = 512
    block: str | None = None  # None: the first massive block; "L"; or "L-" for blocks L..last
    modes: list[str] = field(default_factory=lambda: list(MODES))
    sites: SiteSpec = field(default_factory=SiteSpec)
    means: SiteMeans | None = None  # from a file; else computed on `means_samples` held-out windows
    means_samples: int = 32
    seed: int = 0
    batch_size: int = 8
    progress: bool = True


@dataclass
class InterventionResult:
    model: str
    blocks: list[int]
    rows: list[dict]
    survey: Survey
    after_zero: Survey | None
    means: SiteMeans | None
    means_source: str
    notes: list[str]
    config: InterventionConfig

    def to_json(self) -> dict:
        cfg = self.config
        return {
            "model": self.model,
            "corpora": cfg.corpora,
            "samples": cfg.samples,
            "seq_len": cfg.seq_len,
            "seed": cfg.seed,
            "blocks": self.blocks,
            "block_spec": cfg.block,
            "sites": {
                "dims": list(cfg.sites.dims) if cfg.sites.dims is not None else "detected",
                "tokens": list(cfg.sites.tokens) if cfg.sites.tokens is not None else "detected",
                "thresholds": {"abs": cfg.sites.thresholds.abs, "ratio": cfg.sites.thresholds.ratio},
            },
            "means_source": self.means_source,
            "rows": self.rows,
            "survey": self.survey.to_json(),
            "survey_after_zero": self.after_zero.to_json() if self.after_zero is not None else None,
            "notes": self.notes,
        }


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise MassactError(f"--modes {text!r}: unknown mode {', '.join(unknown) or '(none)'}; use {','.join(MODES)}")
    return list(dict.fromkeys(modes))


def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise MassactError(f"{option} {text!r}: give comma-separated integers, e.g. {option} 0,3") from None
    if not values:
        raise MassactError(f"{option} {text!r}: give at least one integer")
    return values


def resolve_blocks(spec: str | None, num_blocks: int, first_block: int | None) -> list[int]:
    """`spec` None (the first massive block), "L" or "L-" (L to the last block) as block indices."""
    if spec is None:
        if first_block is None:
            raise MassactError(
                "no massive activations found on the surveyed windows, so there is no first massive block; "
                "give --block L (and --dims/--tokens), or lower --ratio-threshold"
            )
        return [first_block]
    text = spec.strip()
    onward = text.endswith("-")
    try:
        start = int(text[:-1] if onward else text)
    except ValueError:
        raise MassactError(f"--block {spec!r}: give a block index L, or L- for blocks L to the last") from None
    if not 0 <= start < num_blocks:
        raise MassactError(f"--block {spec} is out of range; the model has blocks 0..{num_blocks - 1}")
    return list(range(start, num_blocks)) if onward else [start]


def _windows(loaded: LoadedModel, corpus: str, count: int, config: InterventionConfig) -> torch.Tensor:
    from massact.data.corpus import load_windows

    return load_windows(loaded.tokenizer, corpus, samples=count, seq_len=config.seq_len, seed=config.seed)


def run_interventions(
    loaded: LoadedModel,
    config: InterventionConfig,
    *,
    structure: Structure | None = None,
    windows_fn: Callable[[LoadedModel, str, int, InterventionConfig], torch.Tensor] = _windows,
    log: Callable[[str], None] = lambda _: None,
) -> InterventionResult:
    """Perplexity of `loaded` on every corpus, once per mode; see the module docstring."""
    structure = structure or find_structure(loaded.model)
    num_blocks = len(structure)
    if config.block is not None:
        resolve_blocks(config.block, num_blocks, 0)  # refuse a bad --block before any work
    hidden_size = _hidden_size(loaded)
    if hidden_size is not None:
        config.sites.check(hidden_size)
    if config.means is not None and hidden_size is not None:
        config.means.check(hidden_size, num_blocks, range(num_blocks))
    if config.seq_len < 2:
        raise MassactError(f"--seq-len {config.seq_len}: perplexity needs at least 2 tokens per window")
    limit = loaded.context_length
    if limit is not None and config.seq_len > limit:
        raise MassactError(f"--seq-len {config.seq_len} is longer than the model's context ({limit}); lower it")
    needs_means = "mean" in config.modes and config.means is None
    held_out = config.means_samples if needs_means else SURVEY_SAMPLES
    kinds = TokenKinds.from_tokenizer(loaded.tokenizer)

    windows: dict[str, torch.Tensor] = {}
    for index, corpus in enumerate(config.corpora):
        extra = held_out if index == 0 else 0
        log(f"reading {corpus}: {config.samples} windows of {config.seq_len} tokens")
        windows[corpus] = windows_fn(loaded, corpus, config.samples + extra, config)
    first = windows[config.corpora[0]]
    held = first[config.samples :]
    log(f"surveying {held.shape[0]} held-out windows")
    found = survey(
        loaded.model,
        structure,
        held,
        config.sites,
        kinds,
        batch_size=config.batch_size,
        progress=config.progress,
        model_name=loaded.name,
    )
    blocks = resolve_blocks(config.block, num_blocks, found.first_block)
    means = config.means if config.means is not None else found.means
    means_source = config.means.source.removeprefix("--means ") if config.means else f"{held.shape[0]} held-out windows"
    if "mean" in config.modes:
        means.check(found.hidden_size, num_blocks, blocks)
    notes = _notes(found, blocks)
    after_zero = None
    if "zero" in config.modes:
        probe = held[:AFTER_ZERO_SAMPLES]
        log(f"surveying {probe.shape[0]} held-out windows with the zero intervention on")
        with intervene(loaded.model, structure, config.sites, "zero", blocks, kinds=kinds):
            after_zero = survey(
                loaded.model,
                structure,
                probe,
                config.sites,
                kinds,
                batch_size=config.batch_size,
                progress=config.progress,
            )

    rows = []
    for corpus in config.corpora:
        data = windows[corpus][: config.samples]
        for mode in config.modes:
            log(f"{corpus}: {mode}")
            with intervene(
                loaded.model, structure, config.sites, mode, blocks, means=means, kinds=kinds, seed=config.seed
            ) as hooks:
                result = evaluate_perplexity(loaded.model, data, config.batch_size, config.progress)
            hooked = mode != "original"
            rows.append(
                {
                    "mode": mode,
                    "block": blocks[0] if hooked else None,
                    "blocks": blocks if hooked else [],
                    "corpus": corpus,
                    **result.to_json(),
                    "sites": hooks.counts.total,
                    "sites_per_window": hooks.counts.total / data.shape[0] if hooked else 0.0,
                    "sites_by_block": {str(b): n for b, n in sorted(hooks.counts.sites.items())},
                    "sites_without_mean": hooks.counts.without_mean,
                }
            )
            if hooks.counts.without_mean:
                notes.append(f"{corpus}/{mode}: {hooks.counts.without_mean} sites had no mean and were left unchanged")
            if hooked and hooks.counts.total == 0:
                notes.append(f"{corpus}/{mode}: no site was selected at block(s) {blocks_span(blocks)}")
    return InterventionResult(
        model=loaded.name,
        blocks=blocks,
        rows=rows,
        survey=found,
        after_zero=after_zero,
        means=means if "mean" in config.modes else None,
        means_source=means_source,
        notes=notes,
        config=config,
    )


def _hidden_size(loaded: LoadedModel) -> int | None:
    config = loaded.config
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    value = getattr(text, "hidden_size", None)
    return value if isinstance(value, int) else None


def _notes(found: Survey, blocks: Sequence[int]) -> list[str]:
    """What a user needs to read the table: dims that appear after the hooked block(s)."""
    notes = []
    hooked = set(blocks)
    for row in found.dim_spans():
        later = [b for b in row["blocks"] if b > max(hooked)]
        if row["blocks"] and not hooked & set(row["blocks"]) and later:
            notes.append(
                f"dim {row['dim']} is massive at blocks {blocks_span(row['blocks'])}, not at the hooked block(s) "
                f"{blocks_span(blocks)}; rewriting there leaves it (use --block {later[0]}- to reach it)"
            )
    return notes
