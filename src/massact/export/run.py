"""`run`: cut the corpus windows, measure them in one pass, and keep the chosen formats.

`measure_exports` measures windows already cut: the pass both quant and export make (`corpus.measure`), then
what only the files need (the recipe's smoothing mappings, the importance matrix under llama.cpp's names).
"""

from __future__ import annotations

import torch

from massact.corpus.measure import measure_windows
from massact.data.corpus import CorpusInputs, prefix_tokens, token_windows
from massact.detect import Thresholds
from massact.export.config import ExportConfig
from massact.export.imatrix import Imatrix, gguf_weight_names
from massact.export.recipe import kept_linears, smoothing_mappings
from massact.export.result import ExportFiles, ExportResult
from massact.models.loading import LoadedModel
from massact.progress import say
from massact.validate import check_context

MAPPING_TOKENS = 16  # tokens of the pass that finds which norm feeds which Linears


def measure_exports(
    loaded: LoadedModel,
    windows: torch.Tensor,
    *,
    corpus: str = "corpus",
    seed: int = 0,
    batch_size: int = 8,
    thresholds: Thresholds | None = None,
    act_scales: bool = True,
    recipe: bool = False,
    imatrix: bool = False,
    alpha: float = 0.5,
    blocks_path: str | None = None,
    progress: bool = True,
    prefix_tokens: list[str] | None = None,
    description: str = "export",
) -> ExportResult:
    """One pass over `windows` [N, L] (no padding): massive sites, outlier tokens and, if asked, act scales,
    the llm-compressor recipe (its smoothing mappings from one more pass over a few tokens) and the importance
    matrix.

    `prefix_tokens` names what every window starts with (the tokenizer's BOS; see `text_prefix`);
    `description` labels the progress bar.
    """
    names = gguf_weight_names(loaded.model) if imatrix else {}  # refuses an architecture llama.cpp does not name
    measure = measure_windows(
        loaded,
        windows,
        source=corpus,
        batch_size=batch_size,
        thresholds=thresholds,
        act_scales=act_scales or recipe,
        squares=list(names),
        blocks_path=blocks_path,
        progress=progress,
        prefix_tokens=prefix_tokens,
        description=description,
    )
    if recipe and progress:
        say(f"{description}: which norm feeds which Linears (one more pass over {MAPPING_TOKENS} tokens)")
    model, structure = loaded.model, measure.structure
    mappings = smoothing_mappings(model, structure, windows[:1, :MAPPING_TOKENS]) if recipe else []
    kept = kept_linears(measure.act_scales, model, measure.thresholds.abs) if recipe else []
    return ExportResult(
        model=loaded.name,
        corpus=corpus,
        windows=measure.windows,
        seed=seed,
        thresholds=measure.thresholds,
        summary=measure.summary,
        act_scales=measure.act_scales,
        token_counts=measure.token_counts,
        occurrences=measure.occurrences,
        texts=measure.texts,
        mappings=mappings,
        kept=kept,
        alpha=alpha,
        precision=measure.precision,
        features=measure.features,
        imatrix=Imatrix.from_sums(names, measure.squares, [corpus], measure.windows) if imatrix else None,
    )


def run(
    loaded: LoadedModel, inputs: str | CorpusInputs = "shakespeare", config: ExportConfig | None = None
) -> ExportFiles:
    """Export files for other tools from `config.samples` windows of a corpus (a name or path, or `CorpusInputs`)."""
    config = config or ExportConfig()
    inputs = CorpusInputs(inputs) if isinstance(inputs, str) else inputs
    check_context("seq_len", config.seq_len, loaded.context_length)
    windows = token_windows(
        loaded.tokenizer,
        inputs.documents(),
        config.samples,
        config.seq_len,
        config.seed,
        add_special_tokens=config.add_special_tokens,
    )
    if "imatrix" in config.formats:
        gguf_weight_names(loaded.model)  # refuses an architecture llama.cpp does not name, before any word of progress
    if config.progress:
        say(
            f"export: {windows.shape[0]} windows of {windows.shape[1]} tokens from {inputs.corpus} through "
            f"{loaded.name}, {config.batch_size} per forward pass"
        )
    result = measure_exports(
        loaded,
        windows,
        corpus=inputs.corpus,
        seed=config.seed,
        batch_size=config.batch_size,
        thresholds=config.thresholds,
        act_scales="act-scales" in config.formats,
        recipe="recipe" in config.formats,
        imatrix="imatrix" in config.formats,
        blocks_path=config.blocks_path,
        progress=config.progress,
        prefix_tokens=prefix_tokens(loaded.tokenizer, config.add_special_tokens),
    )
    return ExportFiles(result, list(config.formats), execution=loaded.execution())
