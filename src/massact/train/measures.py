"""The extreme-token measures of one forward pass, per block: sinks, value drains, residual peaks, kurtosis.

Position 0 is the first position the blocks see (BOS on Bigram-Backcopy, the learned token of
`sink-token`). Per block:
- `sink_rate`: the share of heads whose mean attention from queries 1.. to position 0 exceeds
  `SINK_THRESHOLD` (Gu et al. 2025); a `sink-logit` head's learned-sink share (1 - the weight
  on real keys) counts with position 0.
- `residual_peak`: |h_0| / median_i>0 |h_i| of the block output, mean over sequences.
- `value_drain`: |v_0| / median_i>0 |v_i| of the value states (all heads together), mean over sequences.
- `kurtosis`: excess kurtosis of every entry of the block output (OSP's measure; 0 for a Gaussian).

Attention weights and values come from `massact.attention.capture` (the model's own eager
attention), block outputs from forward hooks, so the measured model runs unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from massact.attention.capture import AttentionCall, capture_attention
from massact.capture.forward import run_forward
from massact.capture.hooks import forward_hooks, output_tensor
from massact.models.structure import find_structure

SINK_THRESHOLD = 0.3


def first_attention(probs: torch.Tensor, learned_sink: bool = False) -> torch.Tensor:
    """Per head: mean attention from queries 1.. to key 0 ([B, H, T, S] weights -> [H]).

    With `learned_sink`, the weight missing from the keys (a value-less sink logit's share) is added.
    """
    share = probs[:, :, 1:, 0].float()
    if learned_sink:
        share = share + (1.0 - probs[:, :, 1:, :].float().sum(dim=-1))
    return share.mean(dim=(0, 2))


def peak_ratio(norms: torch.Tensor) -> float:
    """Mean over sequences of norm[0] / median(norm[1:]) for [B, T] norms."""
    return float((norms[:, 0] / norms[:, 1:].median(dim=1).values).mean())


def excess_kurtosis(x: torch.Tensor) -> float:
    """E[(x - mean)^4] / var^2 - 3 over every entry of `x`."""
    x = x.double().flatten()
    centred = x - x.mean()
    variance = centred.pow(2).mean()
    return float(centred.pow(4).mean() / variance.pow(2) - 3.0)


@torch.no_grad()
def extreme_token_measures(model: nn.Module, probe_ids: torch.Tensor) -> list[dict]:
    """Per block on `probe_ids` [B, T]: head_first_attention, sink_rate, residual_peak, value_drain, kurtosis."""
    structure = find_structure(model)
    learned_sink = getattr(getattr(model, "config", None), "attention", None) == "sink-logit"
    outputs: dict[int, torch.Tensor] = {}
    attention: dict[int, tuple[torch.Tensor, float]] = {}

    def keep_output(index: int):
        def hook(module, args, output) -> None:
            outputs[index] = output_tensor(output).detach()

        return hook

    def keep_attention(call: AttentionCall) -> None:
        positions = call.probs.shape[2]  # queries = positions; extra keys (k') sit after them
        values = call.values_per_head()[:, :, :positions].transpose(1, 2).flatten(2)
        attention[call.block] = (first_attention(call.probs, learned_sink), peak_ratio(values.float().norm(dim=-1)))

    was_training = model.training
    model.eval()
    try:
        hooks = [(block, keep_output(i)) for i, block in enumerate(structure.blocks)]
        with forward_hooks(hooks), capture_attention(model, structure, keep_attention):
            run_forward(model, probe_ids)
    finally:
        model.train(was_training)
    rows = []
    for index in range(len(structure)):
        heads, drain = attention[index]
        hidden = outputs[index].float()
        rows.append(
            {
                "block": index,
                "head_first_attention": [float(v) for v in heads],
                "sink_rate": float((heads > SINK_THRESHOLD).float().mean()),
                "residual_peak": peak_ratio(hidden.norm(dim=-1)),
                "value_drain": drain,
                "kurtosis": excess_kurtosis(hidden),
            }
        )
    return rows


def site(rows: list[dict]) -> dict:
    """The block row whose top entry is largest against its median: where the paper's per-layer criterion
    looks, and where an entry carried unchanged through later blocks was written."""
    return max(rows, key=lambda row: row["ratio"])


def summarize_blocks(rows: list[dict]) -> dict:
    """One model's measures from its per-block rows.

    `sink_rate` over all heads of all blocks; `residual_peak`, `top1_median` (the scan's ratio) and
    `kurtosis` the largest over blocks; `value_drain` the smallest (the strongest drain). With the
    monitor's rows, the `site` gives `top1` (|x|), `top1_block`, `top1_on_bos`, `top1_dim` and
    `dim_constancy`.
    """
    heads = [share for row in rows for share in row["head_first_attention"]]
    summary = {
        "sink_rate": sum(share > SINK_THRESHOLD for share in heads) / len(heads),
        "residual_peak": max(row["residual_peak"] for row in rows),
        "value_drain": min(row["value_drain"] for row in rows),
        "kurtosis": max(row["kurtosis"] for row in rows),
    }
    if not all("ratio" in row for row in rows):
        return summary
    top = site(rows)
    summary["top1_median"] = top["ratio"]
    if all("top1_on_bos" in row for row in rows):
        summary["top1"] = top["top1"]
        summary["top1_block"] = top["block"]
        summary.update({name: top[name] for name in ("top1_on_bos", "top1_dim", "dim_constancy")})
    return summary
