"""Token-weighted perplexity of a causal LM over fixed-length windows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from massact.errors import MassactError

IGNORE = -100


@dataclass
class PerplexityResult:
    """exp(mean next-token NLL) over all predicted tokens; inf or NaN when the model breaks down."""

    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens: windows x (seq_len - 1)
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


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def evaluate_perplexity(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 8, progress: bool = True
) -> PerplexityResult:
    """Perplexity of `model` on `windows` [N, L]: every window predicts its tokens 1..L-1 from the ones before.

    Each batch's NLL is summed over its predicted tokens (logits upcast to float32), the batch sums are
    added in float64 and divided once by all N x (L - 1) tokens, so every token weighs the same.
    """
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise MassactError(f"perplexity needs windows of shape [N >= 1, L >= 2], got {tuple(windows.shape)}")
    if batch_size < 1:
        raise MassactError(f"--batch-size {batch_size}: must be at least 1")
    device = _input_device(model)
    total = torch.zeros((), dtype=torch.float64)
    nonfinite = 0
    tokens = 0
    starts = range(0, windows.shape[0], batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="perplexity", unit="batch", disable=not progress, leave=False):
            batch = windows[start : start + batch_size].to(device)
            logits = _logits(model(input_ids=batch))  # full windows: no padding, no mask needed
            # shift the targets, not the logits (no copy): position i predicts token i + 1, the last predicts nothing
            flat = logits.float().reshape(-1, logits.shape[-1])
            targets = F.pad(batch[:, 1:], (0, 1), value=IGNORE).reshape(-1).to(logits.device)
            summed = F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum")
            if not torch.isfinite(summed):
                per_token = F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="none")[targets != IGNORE]
                nonfinite += int((~torch.isfinite(per_token)).sum())
                summed = per_token.double().sum()
            total += summed.double().cpu()
            tokens += batch.shape[0] * (batch.shape[1] - 1)
    mean = float(total) / tokens
    perplexity = math.exp(mean) if mean < 709.0 else (math.inf if mean == mean else math.nan)
    return PerplexityResult(perplexity=perplexity, nll=mean, tokens=tokens, nonfinite_tokens=nonfinite)
