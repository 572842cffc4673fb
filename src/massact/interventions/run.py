"""The intervention experiment: perplexity per mode and corpus with the massive activations rewritten.

For each corpus, `samples` windows are evaluated once per mode. Held-out windows of the first corpus
(the next ones in the same seeded order, so never the evaluated ones) are surveyed first: they give the
block map, the default block (where the largest massive activation first appears; outlier features,
large on most tokens, do not count) and, for `mean`, the means
(unless a means file is given). Windows start as the tokenizer starts a text (its BOS), and perplexity
scores only the text tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch

from massact.capture.peaks import BlockPeaks
from massact.data.corpus import corpus_windows, load_texts, prefix_tokens, window_prefix, window_source
from massact.errors import MassactError
from massact.interventions.config import InterventionConfig, resolve_blocks
from massact.interventions.hooks import Intervention, intervene
from massact.interventions.means import SiteMeans
from massact.interventions.phrasing import blocks_span
from massact.interventions.result import InterventionResult
from massact.interventions.sites import SiteSpec
from massact.interventions.survey import Survey, survey
from massact.models.dims import model_dims
from massact.models.loading import LoadedModel
from massact.models.structure import Structure, find_structure
from massact.perplexity import evaluate_perplexity
from massact.precision import Precision
from massact.progress import say
from massact.report.spread import spread
from massact.tasks import evaluate as evaluate_tasks
from massact.tokens import TokenKinds
from massact.validate import check_context

SURVEY_SAMPLES = 8
AFTER_ZERO_SAMPLES = 4
TASKS_BLOCKWISE_REFUSAL = (
    "`tasks` runs the model through lm-evaluation-harness, which needs every block for every batch, so it does not "
    "run block by block (the model does not fit the memory budget, or `offload='blocks'` was given): drop `tasks`, "
    "or use a device that holds the model (`offload='none'`, `max_memory`, `device='cuda'`)"
)

# per corpus: its documents, or windows [N, L] already cut (the first `samples` are evaluated)
Inputs = Mapping[str, Sequence[str] | torch.Tensor] | Sequence[str] | None


@dataclass
class Windows:
    """The windows of one corpus and, when cut here, their source name and stream indices."""

    corpus: str
    ids: torch.Tensor
    source: str | None = None
    index: list[int] | None = None


@contextmanager
def mode_context(
    loaded: LoadedModel,
    structure: Structure | None,
    sites: SiteSpec | InterventionConfig,
    mode: str,
    means: SiteMeans | None,
    blocks: int | Sequence[int] | str,
    *,
    seed: int = 0,
) -> Iterator[Intervention]:
    """Run anything under one mode: while inside, `loaded.model`'s `blocks` outputs are rewritten.

    `blocks` is a block index, a list of them, or a `--block` spec ("11", "11-"); `sites` a `SiteSpec`
    or an `InterventionConfig` (its sites). Token kinds come from the tokenizer, so `mean` finds the
    means of the BOS under 'first'.
    """
    structure = structure or find_structure(loaded.model)
    if isinstance(sites, InterventionConfig):
        seed = sites.seed
        sites = sites.sites
    if isinstance(blocks, str):
        blocks = resolve_blocks(blocks, len(structure), None)
    kinds = TokenKinds.from_tokenizer(loaded.tokenizer)
    with intervene(loaded.model, structure, sites, mode, blocks, means=means, kinds=kinds, seed=seed) as hooks:
        yield hooks


def check(loaded: LoadedModel, config: InterventionConfig, structure: Structure) -> None:
    """Everything about `config` that needs the model, checked before any forward pass."""
    if config.tasks is not None and loaded.offload is not None:
        raise MassactError(TASKS_BLOCKWISE_REFUSAL)
    num_blocks = len(structure)
    if config.block is not None:
        resolve_blocks(config.block, num_blocks, 0)
    hidden_size = model_dims(loaded.model).hidden_size
    config.sites.check(hidden_size, config.seq_len)
    if config.means is not None and hidden_size is not None:
        config.means.check(hidden_size, num_blocks, range(num_blocks))
    check_context("seq_len", config.seq_len, loaded.context_length)
    prefix = window_prefix(loaded.tokenizer, config.add_special_tokens)
    if config.seq_len <= max(1, len(prefix)):
        raise MassactError(
            f"`seq_len={config.seq_len}`: windows start with {len(prefix)} special token(s), so perplexity needs "
            f"at least {max(1, len(prefix)) + 1}; raise `seq_len` or pass `add_special_tokens=False`"
        )


def _cut(loaded: LoadedModel, corpus: str, texts: Sequence[str] | None, count: int, config) -> Windows:
    texts = load_texts(corpus) if texts is None else list(texts)
    ids, index = corpus_windows(loaded.tokenizer, texts, count, config.seq_len, config.seed, config.add_special_tokens)
    source = window_source(corpus, config.seq_len, prefix_tokens(loaded.tokenizer, config.add_special_tokens))
    return Windows(corpus, ids, source, index)


def _windows(loaded: LoadedModel, inputs: Inputs, config: InterventionConfig, held_out: int) -> dict[str, Windows]:
    given: Mapping = inputs if isinstance(inputs, Mapping) else {}
    out: dict[str, Windows] = {}
    for number, corpus in enumerate(config.corpora):
        count = config.samples + (held_out if number == 0 else 0)
        value = given.get(corpus)
        if isinstance(value, torch.Tensor):
            if value.dim() != 2 or value.shape[0] < count or value.shape[1] != config.seq_len:
                need = f"[{count}, {config.seq_len}]"
                raise MassactError(f"{corpus}: windows of shape {tuple(value.shape)}; the run needs at least {need}")
            out[corpus] = Windows(corpus, value[:count])
        else:
            out[corpus] = _cut(loaded, corpus, value, count, config)
    return out


def _overlap_notes(means: SiteMeans | None, windows: dict[str, Windows], samples: int) -> list[str]:
    """A note for every corpus whose evaluated windows are among those the means were taken over."""
    notes = []
    if means is None or not means.windows:
        return notes
    for w in windows.values():
        if w.source is None or w.index is None:
            continue
        shared = means.overlap(w.source, w.index[:samples])
        if shared:
            notes.append(
                f"{shared} of the {samples} evaluated {w.corpus} windows are among those {means.source} was "
                "computed on, so the mean mode sees its own data; use another --seed or a means file of other windows"
            )
    return notes


def run(
    loaded: LoadedModel,
    inputs: Inputs = None,
    config: InterventionConfig | None = None,
) -> InterventionResult:
    """Perplexity of `loaded` on every corpus of `config`, once per mode; see the module docstring.

    `inputs` names the corpora (None: `config.corpora`) or maps each name to its documents or to windows
    already cut; names alone are read with `load_texts`.
    """
    config = config or InterventionConfig()
    if inputs is not None:
        config = replace(config, corpora=tuple(inputs))  # the corpora given here stand for config.corpora
    if config.seeds > 1:
        return _run_seeds(loaded, inputs, config)
    structure = find_structure(loaded.model, config.blocks_path)
    check(loaded, config, structure)
    log = say if config.progress else lambda _: None
    num_blocks = len(structure)
    needs_means = "mean" in config.modes and config.means is None
    held_out = config.means_samples if needs_means else SURVEY_SAMPLES
    kinds = TokenKinds.from_tokenizer(loaded.tokenizer)
    prefix = prefix_tokens(loaded.tokenizer, config.add_special_tokens)

    for corpus in config.corpora:
        log(f"reading {corpus}: {config.samples} windows of {config.seq_len} tokens")
    windows = _windows(loaded, inputs, config, held_out)
    first = windows[config.corpora[0]]
    held = first.ids[config.samples :]
    notes = _overlap_notes(config.means, windows, config.samples)
    for note in notes:
        say(f"warning: {note}")
    log(f"surveying {held.shape[0]} held-out windows")
    peaks = BlockPeaks(loaded.model, structure)  # the unchanged model's block outputs: survey and original mode
    with peaks:
        found = survey(
            loaded.model, structure, held, config.sites, kinds,
            batch_size=config.batch_size, progress=config.progress, model_name=loaded.name,
        )  # fmt: skip
    if config.block is None and found.first_block is None and (bad := Precision.from_peaks(peaks)).overflow_block:
        raise MassactError(f"no massive activation could be measured on the surveyed windows: {bad.warning}")
    if first.source is not None and first.index is not None:
        found.means.windows = {first.source: first.index[config.samples :]}
    blocks = resolve_blocks(config.block, num_blocks, found.main_block)
    # the survey's outlier features are no sites: a dim large on most tokens marks no token
    sites = replace(config.sites, features=tuple(found.features)) if config.sites.dims is None else config.sites
    means = config.means if config.means is not None else found.means
    means_source = config.means.source.removeprefix("--means ") if config.means else f"{held.shape[0]} held-out windows"
    if "mean" in config.modes:
        means.check(found.hidden_size, num_blocks, blocks)
    notes += _notes(found, blocks)
    after_zero = None
    if "zero" in config.modes:
        probe = held[:AFTER_ZERO_SAMPLES]
        log(f"surveying {probe.shape[0]} held-out windows with the zero intervention on")
        with intervene(loaded.model, structure, sites, "zero", blocks, kinds=kinds):
            after_zero = survey(
                loaded.model, structure, probe, sites, kinds,
                batch_size=config.batch_size, progress=config.progress,
            )  # fmt: skip

    rows = []
    for corpus in config.corpora:
        data = windows[corpus].ids[: config.samples]
        for mode in config.modes:
            log(f"{corpus}: {mode}")
            with (
                intervene(
                    loaded.model, structure, sites, mode, blocks, means=means, kinds=kinds, seed=config.seed
                ) as hooks,
                peaks if mode == "original" else nullcontext(),
            ):
                result = evaluate_perplexity(
                    loaded.model, data, config.batch_size, config.progress, prefix_len=len(prefix)
                )
            counts = hooks.counts
            hooked = mode != "original"
            rows.append(
                {
                    "mode": mode,
                    "block": blocks[0] if hooked else None,
                    "blocks": blocks if hooked else [],
                    "corpus": corpus,
                    **result.to_json(),
                    "sites": counts.total,
                    "sites_per_window": counts.total / data.shape[0] if hooked else 0.0,
                    "sites_by_block": {str(b): n for b, n in sorted(counts.sites.items())},
                    "sites_without_mean": counts.without_mean,
                }
            )
            if counts.without_mean:
                notes.append(f"{corpus}/{mode}: {counts.without_mean} sites had no mean and were left unchanged")
            if hooked and counts.total == 0:
                notes.append(f"{corpus}/{mode}: no site was selected at block(s) {blocks_span(blocks)}")
    if config.tasks is not None:
        for mode in config.modes:
            log(f"zero-shot tasks: {mode}")
            scores = evaluate_tasks(
                loaded,
                config.tasks,
                lambda mode=mode: intervene(
                    loaded.model, structure, sites, mode, blocks, means=means, kinds=kinds, seed=config.seed
                ),
            )
            for row in rows:
                if row["mode"] == mode:
                    row["tasks"] = scores.to_json()
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
        prefix_tokens=prefix,
        means_computed=config.means is None,
        precision=Precision.from_peaks(peaks),
        execution=loaded.execution(),
    )


def _run_seeds(loaded: LoadedModel, inputs: Inputs, config: InterventionConfig) -> InterventionResult:
    """The whole run on windows drawn with each seed; the first seed's result, with the spread of every row."""
    if isinstance(inputs, Mapping) and any(isinstance(v, torch.Tensor) for v in inputs.values()):
        raise MassactError("`seeds` > 1 draws new windows: give corpora or their documents, not windows already cut")
    seeds = list(range(config.seed, config.seed + config.seeds))
    results = []
    for number, seed in enumerate(seeds, 1):
        if config.progress:
            say(f"seed {seed} ({number}/{len(seeds)}): the whole run on the windows it draws")
        results.append(run(loaded, inputs, replace(config, seed=seed, seeds=1)))
    first = results[0]
    first.config = config
    first.execution = loaded.execution()  # the peak over every seed's run
    first.spread = {
        "seeds": seeds,
        "rows": [
            {
                "corpus": row["corpus"],
                "mode": row["mode"],
                "perplexity": spread([r.rows[index]["perplexity"] for r in results]),
                "blocks": [r.rows[index]["blocks"] for r in results],
            }
            for index, row in enumerate(first.rows)
        ],
    }
    return first


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
