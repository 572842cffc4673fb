"""Decoding a token stream one token at a time under one cache policy, scoring each prediction."""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from massact.capture.forward import input_device, run_forward
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.structure import Structure
from massact.progress import track
from massact.stream.arrival import ArrivalDetector, ArrivedToken
from massact.stream.kvcache import (
    Rotary,
    cache_keyword,
    drop_entry,
    new_cache,
    quantize_entry,
    read_entry,
    write_entry,
)
from massact.stream.policy import Policy

MAX_DELAY = 16


@dataclass
class PolicyRun:
    """One policy over the stream: the NLL of each scored prediction and what the cache kept."""

    policy: Policy
    cache: int  # most entries the cache holds after a step (the stream length for full)
    nll: torch.Tensor  # [scored] float64, prediction of stream token score_from + i
    kept: list[int] = field(default_factory=list)  # stream positions kept for the whole stream
    detected: list[ArrivedToken] = field(default_factory=list)
    detected_dropped: int = 0  # tokens found massive beyond the most the policy keeps
    final_positions: list[int] = field(default_factory=list)  # stream positions in the cache at the end
    judging_delay: int | None = None  # detection: steps between a token's arrival and its verdict


def takes(model: nn.Module, name: str) -> bool:
    """Whether the model's forward accepts the keyword `name`."""
    parameters = inspect.signature(model.forward).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_cache_support(model: nn.Module) -> None:
    """Refuse in one line when the model keeps no transformers KV cache."""
    if not takes(model, "past_key_values") and not takes(model, "cache"):
        raise MassactError(
            f"{type(model).__name__} takes no past_key_values (it keeps no KV cache), so only the recompute "
            "policy can run on it; use `policies='recompute'`"
        )


def _logits(output: object) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise MassactError("the model returns no [batch, tokens, vocab] logits; streaming needs a causal LM")
    return logits


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-prediction NLL of `targets` [n] from `logits` [n, vocab] (float32 softmax), float64."""
    return F.cross_entropy(logits.float(), targets.to(logits.device), reduction="none").double()


def _victim(positions: list[int], protected: set[int], sinks: int) -> int:
    """Cache index to evict: the oldest entry that is neither a first-`sinks` token nor protected."""
    for index, position in enumerate(positions):
        if position >= sinks and position not in protected:
            return index
    raise RuntimeError("every cache entry is protected")


def judging_delay(cache_size: int, max_detected: int) -> int:
    """Steps between a token's arrival and its verdict: as many as fit before it could be evicted (at most 16)."""
    return max(0, min(MAX_DELAY, cache_size - 1 - max_detected))


def kept_limit(cache_size: int, max_detected: int) -> int:
    """Most detected tokens a cache of `cache_size` keeps: `max_detected`, at most half the cache."""
    return max(1, min(max_detected, cache_size // 2))


class _Sinks:
    """The tokens a policy keeps for the whole stream, and the full-precision copies of entries awaiting a verdict."""

    def __init__(self, detector: ArrivalDetector | None, limit: int) -> None:
        self.detector = detector
        self.limit = limit
        self.protected: set[int] = set()
        self.detected: list[ArrivedToken] = []
        self.dropped = 0
        self.pending: dict[int, list] = {}

    def judge(self, position: int, cache, in_cache: list[int]) -> None:
        found = self.detector.judge(position)
        saved = self.pending.pop(position, None)
        if found is None:
            return
        if len(self.protected) >= self.limit:
            self.dropped += 1
            return
        self.detected.append(found)
        self.protected.add(position)
        if saved is not None and position in in_cache:  # a sink goes back to full precision
            write_entry(cache, in_cache.index(position), saved)


def decode_policy(
    model: nn.Module,
    structure: Structure,
    ids: torch.Tensor,
    policy: Policy,
    cache_size: int,
    score_from: int,
    positions: str = "original",
    max_detected: int = 8,
    thresholds: Thresholds | None = None,
    progress: bool = True,
    inspect_step=None,
) -> PolicyRun:
    """Feed `ids` [tokens] one token at a time with a `DynamicCache`, evicting after each step per `policy`.

    After step i the cache holds at most `cache_size` entries (full: all): the policy's kept tokens
    plus the most recent. With `positions="cache"`, the new token sits at the position of its cache
    index and the keys behind an evicted entry are re-rotated one position down. Detected tokens are
    judged `judging_delay` steps after they arrive, before they could be evicted. `inspect_step(i,
    cache, positions)` is called after each step's eviction (tests use it).
    """
    check_cache_support(model)
    keyword = cache_keyword(model)
    limit = kept_limit(cache_size, max_detected)
    delay = judging_delay(cache_size, limit)
    rotary = Rotary.of(model) if positions == "cache" and policy.kind != "full" else None
    tokens = ids.numel()
    device = input_device(model)
    stream = ids.reshape(1, -1).to(device)
    bounded = policy.kind != "full"
    first = policy.sinks if policy.kind == "sinks" else 0
    detector = ArrivalDetector(model, structure, thresholds or Thresholds()) if policy.needs_detection else None
    sinks = _Sinks(detector, limit)
    cache = new_cache(model)
    in_cache: list[int] = []
    losses: list[torch.Tensor] = []
    steps = track(range(tokens), f"stream {policy.name}", total=tokens, unit="tok") if progress else range(tokens)
    with detector if detector is not None else nullcontext():
        for step in steps:
            position = step if positions == "original" else len(in_cache)
            output = run_forward(
                model,
                stream[:, step : step + 1],
                attention_mask=torch.ones(1, len(in_cache) + 1, dtype=torch.long, device=device),
                position_ids=torch.tensor([[position]], device=device),
                use_cache=True,
                **{keyword: cache},
            )
            if score_from <= step + 1 < tokens:
                losses.append(_nll(_logits(output)[0, -1:], stream[0, step + 1 : step + 2]))
            in_cache.append(step)
            if policy.bits is not None and not (policy.fp_sinks and step < first):
                if policy.fp_sinks and detector is not None:
                    sinks.pending[step] = read_entry(cache, len(in_cache) - 1)
                quantize_entry(cache, len(in_cache) - 1, policy.bits)
            if detector is not None:
                detector.record()
                if step >= delay:
                    sinks.judge(step - delay, cache, in_cache)
            if bounded and len(in_cache) > cache_size:
                protected = sinks.protected if policy.kind == "detected" else set()
                index = _victim(in_cache, protected, first)
                drop_entry(cache, index, rotary)
                del in_cache[index]
            if inspect_step is not None:
                inspect_step(step, cache, list(in_cache))
        if detector is not None:  # the last tokens, for the record
            for late in range(max(0, tokens - delay), tokens):
                sinks.judge(late, cache, in_cache)
    if policy.kind == "sinks":
        kept = list(range(min(first, tokens)))
    else:
        kept = sorted(sinks.protected) if policy.kind == "detected" or policy.fp_sinks else []
    nll = torch.cat(losses).cpu() if losses else torch.zeros(0, dtype=torch.float64)
    return PolicyRun(
        policy=policy,
        cache=cache_size if bounded else tokens,
        nll=nll,
        kept=kept,
        detected=sinks.detected,
        detected_dropped=sinks.dropped,
        final_positions=in_cache,
        judging_delay=delay if detector is not None else None,
    )


def recompute_policy(
    model: nn.Module,
    ids: torch.Tensor,
    policy: Policy,
    cache_size: int,
    score_from: int,
    positions: str = "original",
    stride: int = 1,
    progress: bool = True,
) -> PolicyRun:
    """Each prediction from a fresh forward over the most recent tokens, as the cache policies see them.

    A bounded-cache step predicts token t from the `cache_size + 1` tokens t - cache_size - 1 .. t - 1
    (the cache plus the token fed); recompute runs a fresh forward over that window, one per `stride`
    predictions (the window ending at the last of them; the earlier ones see `stride - 1` fewer tokens).
    """
    tokens = ids.numel()
    device = input_device(model)
    stream = ids.reshape(-1).to(device)
    if positions == "original" and not takes(model, "position_ids"):
        raise MassactError(
            f"{type(model).__name__} takes no position_ids, so recompute cannot keep the original positions; "
            "use `positions='cache'`"
        )
    span = cache_size + 1
    targets = list(range(max(score_from, 1), tokens))
    losses: list[torch.Tensor] = []
    groups = [targets[i : i + stride] for i in range(0, len(targets), stride)]
    iterator = track(groups, f"stream {policy.name}", total=len(groups), unit="fwd") if progress else groups
    for group in iterator:
        end = group[-1]  # window predicts `end` from tokens end - span .. end - 1
        start = max(0, end - span)
        window = stream[start:end].reshape(1, -1)
        kwargs = {}
        if positions == "original":
            kwargs["position_ids"] = torch.arange(start, end, device=device).reshape(1, -1)
        if takes(model, "use_cache"):
            kwargs["use_cache"] = False
        logits = _logits(run_forward(model, window, **kwargs))[0]
        rows = torch.tensor([t - 1 - start for t in group], device=logits.device)
        losses.append(_nll(logits.index_select(0, rows), stream[group[0] : group[-1] + 1]))
    nll = torch.cat(losses).cpu() if losses else torch.zeros(0, dtype=torch.float64)
    return PolicyRun(policy=policy, cache=span - 1, nll=nll, final_positions=list(range(max(0, tokens - span), tokens)))
