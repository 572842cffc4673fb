"""`run`: find the main massive sites of a prompt, trace who writes each, and verify by zeroing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from massact.capture.forward import walk_windows
from massact.capture.risk import capture_quant_risk
from massact.data.corpus import load_texts, prefix_tokens, token_windows, window_prefix
from massact.errors import MassactError
from massact.models.dims import model_dims
from massact.models.loading import LoadedModel
from massact.models.structure import Structure
from massact.scan import MassiveActivation, ScanConfig, scan
from massact.tokens import tokenize_prompt
from massact.trace.capture import run_capture
from massact.trace.config import TraceConfig
from massact.trace.inputs import TraceInputs
from massact.trace.result import TraceResult
from massact.trace.verify import verify_trace
from massact.trace.writer import trace_site
from massact.validate import check_context


def _choose_sites(
    summary_sites: list[dict], massive: list[MassiveActivation], config: TraceConfig
) -> list[tuple[int, int]]:
    token, dim = config.token, config.dim
    if dim is None:
        if token is not None:
            summary_sites = [s for s in summary_sites if s["token"] == token]
        return [(s["token"], s["dim"]) for s in summary_sites[: config.max_sites]]
    if token is None:
        hits = sorted((m for m in massive if m.dim == dim), key=lambda m: -abs(m.value))
        if not hits:
            raise MassactError(f"`dim={dim}` carries no massive activation on this prompt; give `token` too")
        token = hits[0].token
    return [(token, dim)]


def _windows(loaded: LoadedModel, config: TraceConfig, texts: list[str] | None) -> tuple[torch.Tensor, dict]:
    """The corpus windows for perplexity and the risk table, each starting the way the tokenizer starts a text."""
    check_context("seq_len", config.seq_len, loaded.context_length)
    texts = load_texts(config.corpus) if texts is None else texts
    tokenizer = loaded.tokenizer
    windows = token_windows(
        tokenizer, texts, config.samples, config.seq_len, config.seed, add_special_tokens=config.add_special_tokens
    )
    info = {
        "corpus": config.corpus,
        "samples": config.samples,
        "seq_len": config.seq_len,
        "seed": config.seed,
        "prefix_tokens": prefix_tokens(tokenizer, config.add_special_tokens),
        "prefix_len": len(window_prefix(tokenizer, config.add_special_tokens)),
    }
    return windows, info


def _check_site_options(config: TraceConfig, num_tokens: int, hidden_size: int, num_blocks: int) -> None:
    if config.token is not None and config.token >= num_tokens:
        raise MassactError(f"`token={config.token}` is out of range; the prompt has tokens 0..{num_tokens - 1}")
    if config.dim is not None and config.dim >= hidden_size:
        raise MassactError(f"`dim={config.dim}` is out of range; the hidden size is {hidden_size}")
    if config.block is not None and config.block >= num_blocks:
        raise MassactError(f"`block={config.block}` is out of range; the model has blocks 0..{num_blocks - 1}")


def _risk_table(loaded: LoadedModel, structure: Structure, windows: torch.Tensor, config: TraceConfig) -> list[dict]:
    """The int8 risk table of the windows' block outputs, from a pass of its own (no perplexity run to share)."""
    with capture_quant_risk(loaded.model, structure, config.thresholds) as collector:
        walk_windows(loaded.model, windows, config.batch_size, description="int8 risk", progress=config.progress)
    return collector.rows()


def run(loaded: LoadedModel, inputs: str | TraceInputs, config: TraceConfig | None = None) -> TraceResult:
    """Trace the massive sites of a prompt to the sub-layer, expert and weight entries that write them.

    `inputs`: the prompt, or `TraceInputs(prompt, texts)` with the corpus documents of the perplexity /
    risk windows (read from `config.corpus` when None; `TraceInputs.read` reads them before the model loads).
    """
    config = config or TraceConfig()
    inputs = TraceInputs(inputs) if isinstance(inputs, str) else inputs
    prompt = inputs.prompt
    windows, window_info = _windows(loaded, config, inputs.texts) if config.verify or config.risk else (None, None)
    scan_config = ScanConfig(
        thresholds=config.thresholds,
        top_k=1,
        add_special_tokens=config.add_special_tokens,
        blocks_path=config.blocks_path,
    )
    found = scan(loaded, prompt, scan_config)
    structure = found.structure
    hidden_size = model_dims(loaded.model).hidden_size or found.hidden_size
    _check_site_options(config, len(found.tokens), hidden_size, len(structure))
    chosen = _choose_sites(found.summary["sites"], found.massive, config)
    input_ids = tokenize_prompt(loaded, prompt, config.add_special_tokens).input_ids
    result = TraceResult(
        model=loaded.name,
        prompt=prompt,
        tokens=found.tokens,
        kinds=found.kinds,
        thresholds=found.thresholds,
        sites=[],
        massive_sites=found.summary["sites"],
        input_ids=input_ids[0].tolist(),
        windows=window_info,
        top=config.top,
        precision=found.precision,
    )
    if chosen:
        capture = run_capture(loaded.model, structure, input_ids, sorted({t for t, _ in chosen}), hidden_size)
        result.sites = [
            trace_site(
                capture,
                structure,
                hidden_size,
                t,
                d,
                token_text=found.tokens[t],
                token_kind=found.kinds[t],
                block=config.block,
                top=config.top,
                share=config.share,
                experts_input=capture.experts_in.get,
                model=loaded.model,
            )
            for t, d in chosen
        ]
    if windows is None:
        result.execution = loaded.execution()
        return result
    risk: dict = {}

    @contextmanager
    def collect_risk() -> Iterator[None]:  # the risk table from the original perplexity passes
        with capture_quant_risk(loaded.model, structure, config.thresholds) as collector:
            yield
        risk["rows"] = collector.rows()

    if config.verify and result.sites:
        result.verification = verify_trace(
            loaded,
            structure,
            input_ids,
            result.sites,
            config.thresholds,
            windows=windows,
            prefix_len=window_info["prefix_len"],
            batch_size=config.batch_size,
            seed=config.seed,
            progress=config.progress,
            on_original=collect_risk if config.risk else None,
        )
    if config.risk:
        result.quant_risk = risk.get("rows") or _risk_table(loaded, structure, windows, config)
    result.execution = loaded.execution()  # after every pass: the peak memory is the run's
    return result
