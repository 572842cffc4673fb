"""What massive activations cost int8 quantization, block by block, measured by round-tripping.

For each block output (one tensor per sequence, valid tokens only) the massive entries are those the
criterion flags (|x| > abs and |x| >= ratio x the tensor's median |x|). Two symmetric per-tensor int8
round trips (scale = max|x| / 127, `massact.fakequant.round_trip`) are measured:

- *with*: the whole tensor, massive entries included, so they set the scale;
- *without*: the massive entries kept aside in high precision (as LLM.int8() does with outliers) and
  the rest quantized with its own scale.

Errors are reported on the ordinary (non-massive) values, the ones both cases must represent:
relative RMS error `sqrt(sum (x - q(x))^2 / sum x^2)` and the share of non-zero values that round to 0.
All accumulators are sums and maxima, so results over many sequences merge exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from massact.capture.forward import run_forward
from massact.capture.hooks import HookFn, HookSet, output_tensor
from massact.capture.stats import median_magnitude
from massact.detect import Thresholds
from massact.fakequant import round_trip
from massact.models.structure import Structure

INT8_BITS = 8


@dataclass
class BlockRisk:
    """Sums and maxima for one block; `row()` turns them into the reported numbers."""

    sequences: int = 0
    entries: int = 0
    massive: int = 0
    max_abs: float = 0.0
    max_abs_without: float = 0.0
    median_sum: float = 0.0
    ordinary_sq: float = 0.0
    ordinary_nonzero: int = 0
    err_with: float = 0.0
    err_without: float = 0.0
    zeroed_with: int = 0
    zeroed_without: int = 0
    nonfinite: int = 0

    def add(self, x: torch.Tensor, thresholds: Thresholds) -> None:
        x = x.detach().float()
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            self.nonfinite += int((~finite).sum())
            x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        mags = x.abs()
        median = median_magnitude(mags.cpu() if mags.device.type != "cpu" else mags)
        massive = (mags > thresholds.abs) & (mags >= thresholds.cutoff(median))
        ordinary = x[~massive]
        with_massive = round_trip(x, INT8_BITS)[~massive]
        without = round_trip(ordinary, INT8_BITS)
        nonzero = ordinary != 0
        self.sequences += 1
        self.entries += x.numel()
        self.massive += int(massive.sum())
        self.max_abs = max(self.max_abs, float(mags.max()))
        self.max_abs_without = max(self.max_abs_without, float(ordinary.abs().max()) if ordinary.numel() else 0.0)
        self.median_sum += median
        self.ordinary_sq += float((ordinary.double() ** 2).sum())
        self.ordinary_nonzero += int(nonzero.sum())
        self.err_with += float(((ordinary - with_massive).double() ** 2).sum())
        self.err_without += float(((ordinary - without).double() ** 2).sum())
        self.zeroed_with += int((nonzero & (with_massive == 0)).sum())
        self.zeroed_without += int((nonzero & (without == 0)).sum())

    def merge(self, other: BlockRisk) -> BlockRisk:
        total = BlockRisk()
        for name, value in vars(self).items():
            combine = max if name.startswith("max_abs") else (lambda a, b: a + b)
            setattr(total, name, combine(value, getattr(other, name)))
        return total

    def row(self, block: int) -> dict:
        median = self.median_sum / self.sequences if self.sequences else math.nan

        def rel(err: float) -> float:
            return math.sqrt(err / self.ordinary_sq) if self.ordinary_sq > 0 else math.nan

        def share(count: int) -> float:
            return count / self.ordinary_nonzero if self.ordinary_nonzero else math.nan

        return {
            "block": block,
            "sequences": self.sequences,
            "massive_entries": self.massive,
            "max_abs": self.max_abs,
            "max_abs_without": self.max_abs_without,
            "median_abs": median,
            "range_with": self.max_abs / median if median > 0 else math.inf,
            "range_without": self.max_abs_without / median if median > 0 else math.inf,
            "int8_error_with": rel(self.err_with),
            "int8_error_without": rel(self.err_without),
            "zeroed_with": share(self.zeroed_with),
            "zeroed_without": share(self.zeroed_without),
            "nonfinite": self.nonfinite,
        }


class QuantRiskCollector(HookSet):
    """Hooks every block output (padding left out); a context manager, `rows()` when the passes are done."""

    def __init__(self, model: nn.Module, structure: Structure, thresholds: Thresholds | None = None) -> None:
        super().__init__(model)
        self.structure = structure
        self.thresholds = thresholds or Thresholds()
        self.blocks = [BlockRisk() for _ in structure.blocks]

    def forward_hooks(self) -> list[tuple[nn.Module, HookFn]]:
        return [(block, self._hook_for(i)) for i, block in enumerate(self.structure.blocks)]

    def _hook_for(self, index: int) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            hidden = output_tensor(output)
            if hidden.dim() == 2:
                hidden = hidden.unsqueeze(0)
            mask = self.valid_mask(hidden.shape[0], hidden.shape[1], hidden.device)
            for b in range(hidden.shape[0]):
                x = hidden[b] if mask is None else hidden[b][mask[b]]
                if x.numel():
                    self.blocks[index].add(x, self.thresholds)

        return hook

    def rows(self) -> list[dict]:
        return [risk.row(i) for i, risk in enumerate(self.blocks)]


def capture_quant_risk(
    model: nn.Module, structure: Structure, thresholds: Thresholds | None = None
) -> QuantRiskCollector:
    """Hook every block output of `model` within `with`; the collector's `rows()` is the risk table."""
    return QuantRiskCollector(model, structure, thresholds)


def quant_risk(
    model: nn.Module, structure: Structure, batches: list[torch.Tensor], thresholds: Thresholds | None = None
) -> list[dict]:
    """The risk table over `batches` of input ids (no padding, lengths may differ), one row per block.

    Each batch is one `run_forward` (block by block: one read of the model per batch).
    """
    with capture_quant_risk(model, structure, thresholds) as collector:
        for ids in batches:
            run_forward(model, ids)
    return collector.rows()


def markdown_table(rows: list[dict]) -> str:
    """The risk table as Markdown."""
    lines = [
        "| block | massive | max abs | max abs w/o | median abs "
        "| int8 err with | int8 err w/o | to 0 with | to 0 w/o |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['block']} | {r['massive_entries']} | {r['max_abs']:,.1f} | {r['max_abs_without']:,.1f} | "
            f"{r['median_abs']:.3g} | {r['int8_error_with']:.1%} | {r['int8_error_without']:.1%} | "
            f"{r['zeroed_with']:.1%} | {r['zeroed_without']:.1%} |"
        )
    return "\n".join(lines)
