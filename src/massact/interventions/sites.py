"""Which (token, dim) sites of a block output an intervention rewrites: `SiteSpec`.

By default the detector (the massive-activation criterion on this block's output of this sequence, against
its own median, without the outlier features a survey measured), optionally restricted to given token
positions; given dims are taken as they are; with both dims and tokens given, exactly those sites.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from massact.detect import Thresholds
from massact.errors import MassactError
from massact.interventions.medians import sequence_medians


@dataclass(frozen=True)
class SiteSpec:
    """Which (token, dim) sites of a block output to rewrite."""

    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion that detects the sites
    dims: tuple[int, ...] | None = None  # feature dims to rewrite; None: those detected
    tokens: tuple[int, ...] | None = None  # token positions to rewrite; None: those detected
    features: tuple[int, ...] = ()  # outlier features (from a survey): never sites when dims are detected

    @property
    def fixed(self) -> bool:
        """True when the user named both dims and tokens: no detection."""
        return self.dims is not None and self.tokens is not None

    def detect(self, hidden: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask [batch, tokens, dims] of the selected sites of `hidden` [batch, tokens, dims].

        Detection is `Thresholds.massive` against each sequence's median magnitude (over its valid,
        finite entries); the result stays on the device.
        """
        batch, tokens, dims = hidden.shape
        device = hidden.device
        rows = _positions(tuple(self.tokens), tokens, str(device)) if self.tokens is not None else None
        cols = _positions(tuple(self.dims), dims, str(device)) if self.dims is not None else None
        if self.fixed:
            mask = torch.zeros(batch, tokens, dims, dtype=torch.bool, device=device)
            mask[:, rows.unsqueeze(1), cols.unsqueeze(0)] = True
        else:
            mags = hidden.detach().float().abs()
            mask = self.thresholds.massive(mags, sequence_medians(mags, valid).view(batch, 1, 1))
            if cols is None:  # detected dims: an outlier feature marks no token, so it is no site
                skip = _positions(self.features, dims, str(device))
                if skip.numel():
                    mask[..., skip] = False
            else:
                keep = torch.zeros(dims, dtype=torch.bool, device=device)
                keep[cols] = True
                mask &= keep.view(1, 1, dims)
            if rows is not None:
                keep = torch.zeros(tokens, dtype=torch.bool, device=device)
                keep[rows] = True
                mask &= keep.view(1, tokens, 1)
        if valid is not None:
            mask &= valid.unsqueeze(-1)
        return mask

    def check(self, hidden_size: int | None, seq_len: int | None = None) -> None:
        """Refuse dims outside the model's hidden size, and token positions outside the windows."""
        if hidden_size is not None:
            for dim in self.dims or ():
                if not 0 <= dim < hidden_size:
                    raise MassactError(f"`dims={dim}` is out of range; the model has dims 0..{hidden_size - 1}")
        for token in self.tokens or ():
            if token < 0:
                raise MassactError(f"`tokens={token}`: token positions start at 0")
            if seq_len is not None and token >= seq_len:
                raise MassactError(
                    f"`tokens={token}` is out of range; windows of `seq_len={seq_len}` have positions 0..{seq_len - 1}"
                )

    def to_json(self) -> dict:
        return {
            "dims": list(self.dims) if self.dims is not None else "detected",
            "tokens": list(self.tokens) if self.tokens is not None else "detected",
            "thresholds": self.thresholds.to_json(),
        }


@functools.lru_cache(maxsize=64)
def _positions(values: tuple[int, ...], size: int, device: str) -> torch.Tensor:
    """The `values` below `size` as an index tensor on `device`, made once (no copy per forward)."""
    return torch.tensor([v for v in values if v < size], dtype=torch.long, device=device)
