"""`run`: cut the corpus windows, measure them in one pass, and keep the chosen formats."""

from __future__ import annotations

from massact.data.corpus import CorpusInputs, prefix_tokens, token_windows
from massact.export.config import ExportConfig
from massact.models.loading import LoadedModel
from massact.progress import say
from massact.quant.export import ExportFiles, measure_exports
from massact.quant.imatrix import gguf_weight_names
from massact.validate import check_context


def run(
    loaded: LoadedModel, inputs: str | CorpusInputs = "shakespeare", config: ExportConfig | None = None
) -> ExportFiles:
    """Export files for other tools from `config.samples` windows of a corpus (a name or path, or `CorpusInputs`)."""
    config = config or ExportConfig()
    inputs = CorpusInputs(inputs) if isinstance(inputs, str) else inputs
    check_context("--seq-len", config.seq_len, loaded.context_length)
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
