"""Each sequence's median magnitude, the reference the site detector compares against."""

from __future__ import annotations

import math

import torch

from massact.capture.stats import median_magnitude, nan_medians


def sequence_medians(mags: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Lower median of each sequence's finite magnitudes [batch, tokens, dims] -> [batch] (NaN when none).

    On the CPU each row is partitioned on its own; on an accelerator all rows at once, so no value leaves
    the device.
    """
    ok = torch.isfinite(mags)
    if valid is not None:
        ok &= valid.unsqueeze(-1)
    if mags.device.type == "cpu":
        medians = [median_magnitude(row if bool(keep.all()) else row[keep]) for row, keep in zip(mags, ok, strict=True)]
        return torch.tensor(medians, dtype=torch.float32)
    return device_medians(mags, ok)


def device_medians(mags: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """`sequence_medians` on any device, without a host synchronisation (entries where `ok` is False left out)."""
    return nan_medians(torch.where(ok, mags, torch.full_like(mags, math.nan)))
