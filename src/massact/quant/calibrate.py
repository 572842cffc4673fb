"""What the strategies learn from held-out calibration windows, in one pass (`corpus.measure`, the pass `export`
makes).

- per-input-channel maxima |x| of every Linear (the numbers `massact export --format act-scales` writes),
  from which `smooth` derives its scales;
- the outlier tokens: the first position when most windows' first token carries a massive activation,
  and the token ids that carry one on most of their occurrences elsewhere; outlier features (dims that
  pass the criterion on most tokens, `Thresholds.feature_share`) are left out, since they mark no token;
- the super weights: given (from `massact trace` on the text of a calibration window, see
  `super_weights_from_trace`; `massact.quant.run` traces them);
- the first tokens of the first window, on which `rotate` maps the residual stream as the rewrite does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from massact.corpus.measure import WindowMeasure, measure_windows
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.residual.support import PROBE_TOKENS

MAJORITY = 0.5  # a position or token id is an outlier token when it carries massive activations this often
SUPER_RATIO = 10.0  # a traced entry is a super weight when |w| is at least this many times its matrix's median |w|


@dataclass(frozen=True)
class SuperWeight:
    """One weight entry kept in full precision: `module.parameter[index]`."""

    module: str
    parameter: str
    index: tuple[int, ...]
    value: float
    block: int

    def to_json(self) -> dict:
        return {
            "module": self.module,
            "parameter": self.parameter,
            "index": list(self.index),
            "value": self.value,
            "block": self.block,
        }


@dataclass
class Calibration:
    """Everything the strategies take from the calibration windows."""

    windows: list[int]  # [samples, seq_len]
    act_maxima: dict[str, torch.Tensor]  # module name -> max |x| per input channel
    first_positions: int  # leading positions kept (0 or 1)
    first_rate: float  # share of calibration windows whose first token carries a massive activation
    token_ids: list[int]  # token ids kept wherever they occur
    token_texts: list[str]
    super_weights: list[SuperWeight] = field(default_factory=list)
    massive_blocks: list[int] = field(default_factory=list)  # blocks whose outputs carry massive activations
    features: dict[int, float] = field(default_factory=dict)  # outlier features: dim -> largest token share
    probe: torch.Tensor | None = None  # [1, <= 32] ids: where `rotate` maps the residual stream (`quant.rotate`)

    def outlier_tokens_json(self) -> dict:
        return {
            "first_positions": self.first_positions,
            "first_position_rate": self.first_rate,
            "token_ids": self.token_ids,
            "tokens": self.token_texts,
            "outlier_features": [{"dim": d, "token_share": v} for d, v in self.features.items()],
        }

    def kept_share(self, windows: torch.Tensor) -> float:
        """The share of the tokens of `windows` [N, L] that `outlier-tokens` keeps in full precision."""
        keep = torch.isin(windows, torch.tensor(self.token_ids, dtype=windows.dtype))
        keep[:, : self.first_positions] = True
        return float(keep.float().mean())


def outlier_rule(measure: WindowMeasure) -> tuple[int, float, list[int], list[str]]:
    """(leading positions, first-position rate, token ids, texts) that carry massive activations mostly."""
    samples = measure.windows[0]
    first = sum(c.at_first for c in measure.token_counts.values())
    rate = first / samples if samples else 0.0
    ids = []
    for token_id, count in sorted(measure.token_counts.items()):
        elsewhere = measure.occurrences[token_id] - count.at_first  # upper bound on non-first occurrences
        if count.count - count.at_first > MAJORITY * max(elsewhere, 1):
            ids.append(token_id)
    return int(rate > MAJORITY), rate, ids, [measure.texts[i] for i in ids]


def calibration_text(loaded: LoadedModel, window: torch.Tensor) -> str:
    """The text of one calibration window (special tokens left out), for `massact trace` to read."""
    if loaded.tokenizer is None:
        raise MassactError("keep-super-weights needs a tokenizer to trace a calibration text")
    return loaded.tokenizer.decode(window.tolist(), skip_special_tokens=True)


def super_weights_from_trace(entries: list[dict], limit: int) -> list[SuperWeight]:
    """The super weights among a trace's ranked entries (`TraceResult.entries()`): the top `limit` per site
    of a dense weight whose |w| is an outlier of its matrix (>= 10 x its median |w|)."""
    found: dict[tuple[str, tuple[int, ...]], SuperWeight] = {}
    for entry in entries:
        key = (entry["parameter"], tuple(entry["stored_index"]))
        dense = entry.get("expert") is None and entry["parameter"] == f"{entry['module']}.weight"
        if dense and key not in found and entry["rank"] <= limit and entry["weight_ratio"] >= SUPER_RATIO:
            found[key] = SuperWeight(entry["module"], entry["parameter"], key[1], entry["weight"], entry["block"])
    return list(found.values())


def calibrate(
    loaded: LoadedModel,
    windows: torch.Tensor,
    *,
    thresholds: Thresholds,
    super_weights: list[SuperWeight] | None = None,
    blocks_path: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Calibration:
    """One capture pass over the calibration `windows` [M, L]; `super_weights` are carried along."""
    measure = measure_windows(
        loaded,
        windows,
        source="calibration",
        batch_size=batch_size,
        thresholds=thresholds,
        act_scales=True,
        blocks_path=blocks_path,
        progress=progress,
        description="calibrating",
    )
    positions, rate, ids, texts = outlier_rule(measure)
    return Calibration(
        windows=list(windows.shape),
        act_maxima=measure.act_scales,
        first_positions=positions,
        first_rate=rate,
        token_ids=ids,
        token_texts=texts,
        super_weights=list(super_weights or []),
        massive_blocks=sorted({s["block"] for s in measure.sites() if s["dim"] not in measure.features}),
        features=measure.features,
        probe=windows[:1, :PROBE_TOKENS].clone(),
    )
