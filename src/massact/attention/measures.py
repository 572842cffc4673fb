"""Per-block, per-head attention measures of one sequence, from one captured attention call.

- importance of key k (Gu et al.): mean attention probability k receives from the queries that can see it;
  a head is a sink head when the first token's importance exceeds a threshold;
- mass on the massive-activation tokens C: mean over the queries that can see any of C of `sum_{k in C} p_ik`;
- the value-update decomposition `o_i = sum_{k in C} p_ik v_k + rest_i`: how constant the C part is across
  queries (mean cosine to its mean; relative variance `mean ||c_i - mean c||^2 / mean ||c_i||^2`) and its
  share of the output norm (`mean ||c_i|| / ||o_i||`), per head and with all heads concatenated;
- a learned sink logit `s` per head (GPT-OSS; transformers hands it to the attention function as `s_aux`)
  sits in the softmax denominator beside the keys: its share is `exp(s) / (Z + exp(s))`, `Z` the sum of
  `exp(logit)` over the keys a query sees, averaged over queries;
- a block that runs no softmax attention (linear attention, a state-space layer) has none of these measures.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields

import torch

from massact.attention.capture import AttentionCall

NAN = float("nan")
CHECKED_QUERIES = 8


@dataclass
class BlockAttention:
    """Measures of one block on one sequence; per-head tensors are [heads]."""

    first_importance: torch.Tensor
    sink: torch.Tensor  # 1.0 where the head is a sink head
    massive_mass: torch.Tensor
    c_cosine: torch.Tensor
    c_relvar: torch.Tensor
    c_share: torch.Tensor
    rest_cosine: torch.Tensor
    block_c_cosine: float = NAN
    block_c_relvar: float = NAN
    block_c_share: float = NAN
    block_rest_cosine: float = NAN
    decomposition_error: float = NAN  # |o - p v| / |o| on the last queries: 0 when o_i = sum_k p_ik v_k
    replace_mean_change: float = NAN  # |y' - y| / |y - x| with the C part replaced by its mean over queries
    replace_zero_change: float = NAN  # the same with the C part removed (control)
    extra: dict = field(default_factory=dict)

    @property
    def sink_fraction(self) -> float:
        return float(self.sink.mean())


def _constancy(parts: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cosine to the mean, relative variance and norm share of `parts` [..., queries, dim] vs `outputs`."""
    mean = parts.mean(-2, keepdim=True)
    cosine = torch.nn.functional.cosine_similarity(parts, mean.expand_as(parts), dim=-1).mean(-1)
    spread = (parts - mean).pow(2).sum(-1).mean(-1)
    energy = parts.pow(2).sum(-1).mean(-1)
    relvar = spread / energy
    share = (parts.norm(dim=-1) / outputs.norm(dim=-1).clamp_min(1e-30)).mean(-1)
    return cosine, relvar, share


def sink_queries(call: AttentionCall, batch_index: int, sinks: list[int]) -> torch.Tensor:
    """bool [queries]: the queries that can see at least one of `sinks`."""
    visible = call.visible()[batch_index, 0]
    if not sinks:
        return torch.zeros(visible.shape[0], dtype=torch.bool, device=visible.device)
    return visible[:, sinks].any(-1)


def c_part(call: AttentionCall, batch_index: int, sinks: list[int]) -> torch.Tensor:
    """`sum_{k in sinks} p_ik v_k` per head and query: [heads, queries, head_dim] in float32."""
    probs = call.probs[batch_index].float()
    values = call.values_per_head()[batch_index].float()
    return torch.matmul(probs[:, :, sinks], values[:, sinks, :])


def measure_call(call: AttentionCall, batch_index: int, sinks: list[int], threshold: float) -> BlockAttention:
    """All measures of one block on sequence `batch_index`; `sinks` are the key positions of C."""
    probs = call.probs[batch_index].float()  # [H, T, S]
    visible = call.visible()[batch_index].float()  # [1, T, S]
    heads = probs.shape[0]
    seen_by = visible.sum(1)  # [1, S]
    importance = (probs * visible).sum(1) / seen_by  # [H, S]
    first_importance = importance[:, 0]
    nan_heads = torch.full((heads,), NAN)
    record = BlockAttention(
        first_importance=first_importance.cpu(),
        sink=(first_importance > threshold).float().cpu(),
        massive_mass=nan_heads.clone(),
        c_cosine=nan_heads.clone(),
        c_relvar=nan_heads.clone(),
        c_share=nan_heads.clone(),
        rest_cosine=nan_heads.clone(),
    )
    values = call.values_per_head()[batch_index].float()
    outputs = call.output[batch_index].float().transpose(0, 1)  # [H, T, d]
    last = slice(max(0, probs.shape[1] - CHECKED_QUERIES), None)
    rebuilt = torch.matmul(probs[:, last], values)
    record.decomposition_error = float((outputs[:, last] - rebuilt).norm() / outputs[:, last].norm().clamp_min(1e-30))
    queries = sink_queries(call, batch_index, sinks)
    if not sinks or not bool(queries.any()):
        return record
    record.massive_mass = probs[:, queries][:, :, sinks].sum(-1).mean(-1).cpu()
    parts = c_part(call, batch_index, sinks)[:, queries]  # [H, n, d]
    outs = outputs[:, queries]
    cosine, relvar, share = _constancy(parts, outs)
    record.c_cosine, record.c_relvar, record.c_share = cosine.cpu(), relvar.cpu(), share.cpu()
    record.rest_cosine = _constancy(outs - parts, outs)[0].cpu()
    n = parts.shape[1]
    flat_parts = parts.transpose(0, 1).reshape(n, -1)
    flat_outs = outs.transpose(0, 1).reshape(n, -1)
    cosine, relvar, share = _constancy(flat_parts, flat_outs)
    record.block_c_cosine, record.block_c_relvar, record.block_c_share = float(cosine), float(relvar), float(share)
    record.block_rest_cosine = float(_constancy(flat_outs - flat_parts, flat_outs)[0])
    return record


def learned_sink_share(call: AttentionCall, batch_index: int) -> torch.Tensor | None:
    """Per head, the mean over queries of `exp(s) / (Z + exp(s))` for the learned sink logit `s`; None without one."""
    sinks = call.kwargs.get("s_aux")
    if not isinstance(sinks, torch.Tensor):
        return None
    log_z = torch.logsumexp(call.logits()[batch_index].nan_to_num(nan=-math.inf), dim=-1)  # [H, T]
    return torch.sigmoid(sinks.float().reshape(-1, 1) - log_z).mean(-1)


def no_softmax_record(heads: int, mixer: str | None) -> BlockAttention:
    """The record of a block without softmax attention: every measure undefined (NaN), its token mixer named."""
    per_head = [f.name for f in fields(BlockAttention) if f.default is MISSING and f.default_factory is MISSING]
    nan = torch.full((heads,), NAN)
    return BlockAttention(
        **{name: nan.clone() for name in per_head}, extra={"softmax_attention": False, "mixer": mixer}
    )


def replaced_output(call: AttentionCall, sinks: list[int], mode: str) -> torch.Tensor:
    """The attention output with the C part replaced by its mean over queries ("mean") or removed ("zero")."""
    deltas = []
    for b in range(call.probs.shape[0]):
        parts = c_part(call, b, sinks)  # [H, T, d]
        queries = sink_queries(call, b, sinks)
        if not bool(queries.any()):
            deltas.append(torch.zeros_like(parts).transpose(0, 1))
            continue
        if mode == "mean":
            target = parts[:, queries].mean(1, keepdim=True).expand_as(parts)
        elif mode == "zero":
            target = torch.zeros_like(parts)
        else:
            raise ValueError(f"unknown replacement mode {mode!r}")
        delta = (target - parts) * queries[None, :, None]
        deltas.append(delta.transpose(0, 1))
    return (call.output.float() + torch.stack(deltas)).to(call.output.dtype)
