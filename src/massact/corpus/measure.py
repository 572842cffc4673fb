"""One pass over corpus windows that both quant's calibration and `massact export` read.

`measure_windows(loaded, windows, ...)` runs every window once (in batches, `walk_windows`) and keeps, in
a `WindowMeasure`: the corpus summary of the massive sites, the token ids that carry them (outlier
features, dims large on most tokens, left out), whether the run's dtype held the block outputs and, if asked,
each Linear's per-input-channel max |x| (SmoothQuant's act scales) and the sum of x^2 of named modules'
inputs (llama.cpp's importance matrix). Quant derives its strategies from it (`massact.quant.calibrate`);
export writes it as files (`massact.export`).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from massact.capture.forward import walk_windows
from massact.capture.peaks import BlockPeaks, ChannelSquares, linear_inputs
from massact.capture.stats import SequenceRecord, capture_block_stats
from massact.corpus.summary import CorpusSummary
from massact.detect import Thresholds, feature_dims
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import Structure, find_structure
from massact.precision import Precision
from massact.progress import steps
from massact.tokens import TokenText

TOP_K = 3  # the top values per block a measure keeps: what the site statistics need


@dataclass
class TokenCount:
    """How often one token id carries a massive activation (any block, any dim) over the windows."""

    count: int = 0  # occurrences that carry one
    at_first: int = 0  # of those, at a window's first position
    max_abs: float = 0.0
    dims: set[int] = field(default_factory=set)
    blocks: set[int] = field(default_factory=set)


@dataclass
class WindowMeasure:
    """What one pass over `windows` [samples, seq_len] measured."""

    windows: list[int]  # [samples, seq_len]
    thresholds: Thresholds
    structure: Structure
    summary: CorpusSummary | None  # the massive sites (None: no window ran)
    token_counts: dict[int, TokenCount]  # token id -> how often it carries a massive activation
    occurrences: dict[int, int]  # token id (of those) -> its occurrences in the windows
    texts: dict[int, str]  # token id (of those) -> its text
    features: dict[int, float]  # outlier features: dim -> largest token share
    precision: Precision  # whether the run's dtype held the block outputs
    act_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # Linear -> max |x| per input channel
    squares: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)  # module -> (sum x^2, tokens)

    def sites(self) -> list[dict]:
        """The massive sites (`CorpusSummary.means`), outlier features included; [] when there are none."""
        return self.summary.means()["sites"] if self.summary is not None else []


def count_tokens(
    record: SequenceRecord, ids: list[int], counts: dict[int, TokenCount], thresholds: Thresholds
) -> dict[int, float]:
    """Count the tokens that carry massive activations; outlier features (returned, dim -> token share) are
    left out: a dim large on most tokens says nothing about which tokens are special."""
    features = feature_dims((rec.massive_dims for rec in record.blocks), len(ids), thresholds)
    carried: dict[int, TokenCount] = {}
    for block, rec in enumerate(record.blocks):
        for t, d, v in zip(
            rec.massive_tokens.tolist(), rec.massive_dims.tolist(), rec.massive_values.tolist(), strict=True
        ):
            if d in features:
                continue
            site = carried.setdefault(t, TokenCount())
            site.max_abs = max(site.max_abs, abs(v))
            site.dims.add(d)
            site.blocks.add(block)
    for position, site in carried.items():
        total = counts.setdefault(ids[position], TokenCount())
        total.count += 1
        total.at_first += int(position == 0)
        total.max_abs = max(total.max_abs, site.max_abs)
        total.dims |= site.dims
        total.blocks |= site.blocks
    return features


def measure_windows(
    loaded: LoadedModel,
    windows: torch.Tensor,
    *,
    source: str = "corpus",
    batch_size: int = 8,
    thresholds: Thresholds | None = None,
    act_scales: bool = True,
    squares: Iterable[str] = (),
    blocks_path: str | None = None,
    progress: bool = True,
    prefix_tokens: list[str] | None = None,
    description: str = "export",
) -> WindowMeasure:
    """One pass over `windows` [N, L] (no padding): massive sites, outlier tokens, precision and, if asked, the
    act scales of every Linear and the sums of x^2 of the inputs of the modules named in `squares`.

    `source` names the windows in the summary; `prefix_tokens` names what every window starts with (the
    tokenizer's BOS; see `text_prefix`); `description` labels the progress bar.
    """
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise MassactError(f"windows must be [N >= 1, L] token ids, got shape {tuple(windows.shape)}")
    thresholds = thresholds or Thresholds()
    model = loaded.model
    structure = find_structure(model, blocks_path)
    texts = TokenText(loaded.tokenizer)
    scales = linear_inputs(model) if act_scales else None
    sums = ChannelSquares(model, squares) if squares else None
    summary: CorpusSummary | None = None
    counts: dict[int, TokenCount] = {}
    features: dict[int, float] = {}

    def consume(start: int, ids: torch.Tensor, output: object) -> None:
        nonlocal summary
        for offset, record in enumerate(collector.pop()):
            row_ids = windows[start + offset].tolist()
            if summary is None:
                hidden = int(record.blocks[0].dim_max.numel())
                summary = CorpusSummary(
                    loaded.name, hidden, len(structure), thresholds, TOP_K, windows.shape[1],
                    prefix_tokens=list(prefix_tokens or []),
                )  # fmt: skip
            tokens, kinds = texts.kinds_and_texts(row_ids, 0)
            summary.add(record, source, start + offset, tokens, kinds)
            for dim, share in count_tokens(record, row_ids, counts, thresholds).items():
                features[dim] = max(features.get(dim, 0.0), share)

    count = windows.shape[0]
    blockwise = loaded.offload is not None  # block by block, windows arrive after the last block: its own bar
    with ExitStack() as stack:
        collector = stack.enter_context(capture_block_stats(model, structure, top_k=TOP_K, thresholds=thresholds))
        peaks = stack.enter_context(BlockPeaks(model, structure))
        for hooks in (scales, sums):
            if hooks is not None:
                stack.enter_context(hooks)
        shown = stack.enter_context(steps(count, description, unit="windows", enabled=progress and not blockwise))

        def consume_shown(start: int, ids: torch.Tensor, output: object) -> None:
            consume(start, ids, output)
            shown.advance(len(ids), note=f"{len(counts)} token ids carry massive activations so far")

        walk_windows(
            model, windows, batch_size, consume_shown, description=description, progress=progress and blockwise
        )
    all_ids, frequency = torch.unique(windows, return_counts=True)
    occurrences = dict(zip(all_ids.tolist(), frequency.tolist(), strict=True))
    return WindowMeasure(
        windows=list(windows.shape),
        thresholds=thresholds,
        structure=structure,
        summary=summary.canonical() if summary is not None else None,
        token_counts=counts,
        occurrences={i: occurrences[i] for i in counts},
        texts={i: texts.text(i) for i in counts},
        features=dict(sorted(features.items())),
        precision=Precision.from_peaks(peaks),
        act_scales=scales.maxima if scales is not None else {},
        squares=sums.sums if sums is not None else {},
    )
