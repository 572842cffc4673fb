"""Token-weighted perplexity of a causal LM over fixed-length windows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from massact.capture.forward import walk_windows
from massact.errors import MassactError
from massact.validate import at_least

IGNORE = -100


@dataclass
class PerplexityResult:
    """exp(mean next-token NLL) over all scored tokens; inf or NaN when the model breaks down."""

    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # scored (text) tokens: windows x (seq_len - max(1, prefix_len))
    nonfinite_tokens: int = 0  # tokens whose NLL was inf or NaN

    def to_json(self) -> dict:
        return {
            "perplexity": self.perplexity,
            "nll": self.nll,
            "tokens": self.tokens,
            "nonfinite_tokens": self.nonfinite_tokens,
        }


def _logits(output: object) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise MassactError("the model returns no [batch, tokens, vocab] logits; perplexity needs a causal LM")
    return logits


def evaluate_perplexity(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 8, progress: bool = True, prefix_len: int = 0
) -> PerplexityResult:
    """Perplexity of `model` on `windows` [N, L]: every text token is predicted from the ones before it.

    The first `prefix_len` positions of each window are the tokenizer's prefix (BOS), never a target:
    the targets are the tokens at positions max(1, prefix_len) .. L-1. Each batch's NLL is summed over its
    targets (logits upcast to float32), the batch sums are added in float64 and divided once by all
    N x (L - max(1, prefix_len)) scored tokens, so every token weighs the same.
    """
    first = max(1, prefix_len)
    if windows.dim() != 2 or windows.shape[0] < 1 or windows.shape[1] <= first:
        raise MassactError(
            f"perplexity needs windows of shape [N >= 1, L > {first}] (a prefix of {prefix_len}), "
            f"got {tuple(windows.shape)}"
        )
    at_least("batch_size", batch_size)
    total = torch.zeros((), dtype=torch.float64)
    nonfinite = 0
    tokens = 0

    def consume(start: int, batch: torch.Tensor, output: object) -> None:
        nonlocal total, nonfinite, tokens
        logits = _logits(output)  # full windows: no padding
        # shift the targets, not the logits (no copy): position i predicts token i + 1, the last predicts nothing
        flat = logits.float().reshape(-1, logits.shape[-1])
        targets = batch.to(logits.device)[:, first:]
        targets = F.pad(targets, (first - 1, 1), value=IGNORE).reshape(-1)
        summed = F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum")
        if not torch.isfinite(summed):
            per_token = F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="none")[targets != IGNORE]
            nonfinite += int((~torch.isfinite(per_token)).sum())
            summed = per_token.double().sum()
        total += summed.double().cpu()
        tokens += batch.shape[0] * (batch.shape[1] - first)

    with torch.inference_mode():
        walk_windows(model, windows, batch_size, consume, description="perplexity", progress=progress)
    mean = float(total) / tokens
    perplexity = math.exp(mean) if mean < 709.0 else (math.inf if mean == mean else math.nan)
    return PerplexityResult(perplexity=perplexity, nll=mean, tokens=tokens, nonfinite_tokens=nonfinite)
