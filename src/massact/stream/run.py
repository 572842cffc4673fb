"""`run`: every policy over one token stream, and the stream itself cut from a text."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from massact.capture.peaks import BlockPeaks
from massact.data.corpus import load_texts, text_prefix
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.precision import Precision
from massact.stream.config import StreamConfig
from massact.stream.decode import PolicyRun, check_cache_support, decode_policy, recompute_policy
from massact.stream.kvcache import Rotary
from massact.stream.result import StreamResult, TokenStream
from massact.validate import at_least
from massact.validate import check_context as fits_context


def cut_stream(tokenizer, text: str, offset: int = 0, tokens: int = 1200, source: str = "text") -> TokenStream:
    """The stream: the tokenizer's prefix (its BOS, if any), then text tokens offset.. of `text` tokenized
    whole without special tokens, `tokens` in all."""
    if tokenizer is None:
        raise MassactError("the model has no tokenizer, so it cannot read a text; give a model with a tokenizer")
    if offset < 0:
        raise MassactError(f"`offset={offset}`: must be 0 or more")
    prefix = text_prefix(tokenizer)
    at_least("tokens", tokens, len(prefix) + 2)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    needed = tokens - len(prefix)
    if offset + needed > len(ids):
        raise MassactError(
            f"`offset={offset}` + {needed} text tokens runs past the end of the text ({len(ids)} tokens); "
            "lower `offset` or `tokens`, or give a longer text"
        )
    stream = torch.tensor(prefix + list(ids[offset : offset + needed]), dtype=torch.long)
    return TokenStream(
        ids=stream,
        prefix=[tokenizer.convert_ids_to_tokens(i) for i in prefix],
        source=source,
        offset=offset,
        texts=[tokenizer.decode([i]) for i in stream.tolist()],
    )


def check_context(loaded: LoadedModel, tokens: int, config: StreamConfig) -> None:
    """Refuse in one line when a policy would place a token beyond the model's context."""
    context = loaded.context_length
    if context is None:
        return
    bounded = [p for p in config.policies if p.kind != "full"]
    unbounded = config.positions == "original" or len(bounded) < len(config.policies)
    if unbounded:
        fits_context("tokens", tokens, context, "use `positions='cache'` with bounded policies, or lower `tokens`")
    if bounded and config.cache + 1 > context:
        raise MassactError(f"`cache={config.cache}` does not fit the model's context of {context} tokens; lower it")


def document_text(corpus: str, document: int) -> tuple[str, str]:
    """Text number `document` of `corpus`, and its name `corpus[document]`."""
    texts = load_texts(corpus)
    if not 0 <= document < len(texts):
        raise MassactError(f"`document={document}`: the corpus holds texts 0..{len(texts) - 1}")
    return texts[document], f"{corpus}[{document}]"


def check_offset(text: str, offset: int, source: str) -> None:
    """Refuse an offset past the end of `text`, before any tokenizer is at hand."""
    if offset >= len(text.encode("utf-8")):  # a text of B bytes has fewer than B tokens
        raise MassactError(f"`offset={offset}` is past the end of {source}; lower `offset`")


BLOCKWISE_REFUSAL = (
    "stream decodes token by token and needs every block for every token, so it does not run block by block "
    "(the model does not fit the memory budget, or `offload='blocks'` was given): use a device that holds the "
    "model (`device='cuda'`, `max_memory`), or `device_map='auto'` to spread it over GPUs, CPU and disk"
)


def run(loaded: LoadedModel, stream: TokenStream | torch.Tensor, config: StreamConfig) -> StreamResult:
    """Decode `stream` under every policy of `config`; perplexity over predictions config.first_scored().."""
    if loaded.offload is not None:
        raise MassactError(BLOCKWISE_REFUSAL)
    if isinstance(stream, torch.Tensor):
        stream = TokenStream(ids=stream.reshape(-1).long(), prefix=[], source="ids", offset=0, texts=[])
    tokens = stream.ids.numel()
    config.check_tokens(tokens)
    score_from = config.first_scored()
    model = loaded.model
    check_context(loaded, tokens, config)
    if any(p.kind != "recompute" for p in config.policies):
        check_cache_support(model)
    if config.positions == "cache" and any(p.kind not in ("full", "recompute") for p in config.policies):
        Rotary.of(model).check(model, stream.ids)
    structure = find_structure(model, config.blocks_path)
    runs: list[PolicyRun] = []
    seconds: list[float] = []
    peaks = BlockPeaks(model, structure)
    for policy in config.policies:
        started = time.perf_counter()
        if policy.kind == "recompute":
            outcome = recompute_policy(
                model, stream.ids, policy, config.cache, score_from, config.positions, config.stride, config.progress
            )
        else:
            with peaks if policy.kind == "full" else nullcontext():
                outcome = decode_policy(
                    model,
                    structure,
                    stream.ids,
                    policy,
                    config.cache,
                    score_from,
                    config.positions,
                    config.max_detected,
                    config.thresholds,
                    config.progress,
                )
        seconds.append(time.perf_counter() - started)
        runs.append(outcome)
    precision = Precision.from_peaks(peaks) if peaks.dtype is not None else None  # measured on the full cache
    return StreamResult(
        model=loaded.name, stream=stream, config=config, runs=runs, seconds=seconds, precision=precision
    )
