"""Watch massive activations emerge during training.

`ActivationMonitor` runs a fixed probe batch through the model every `every` steps and
records, per block, the top activation magnitude, the median magnitude and their ratio,
with the same capture code as `massact scan` (so its numbers equal a scan of the probe), and
the extreme-token measures of `massact.train.measures` (sink rate, residual peak, value drain,
kurtosis).
Use it from a plain loop (`monitor.step(model, step)`) or from a transformers `Trainer`
(`monitor.trainer_callback()`). It writes `monitor.csv` / `monitor.json` and, when
TensorBoard is installed, scalars.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from massact.capture.forward import run_forward
from massact.capture.stats import capture_block_stats
from massact.detect import Thresholds
from massact.models.structure import find_structure
from massact.outputs import atomic_write_text, to_json_text
from massact.train.measures import extreme_token_measures, site, summarize_blocks

FIELDS = (
    "step",
    "block",
    "top1",
    "median",
    "ratio",
    "top_token",
    "top_dim",
    "num_massive",
    "top1_on_bos",
    "top1_dim",
    "dim_constancy",
    "sink_rate",
    "residual_peak",
    "value_drain",
    "kurtosis",
)


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard not installed: CSV/JSON only
        return None
    return SummaryWriter(log_dir=str(log_dir))


@torch.no_grad()
def probe_statistics(model: nn.Module, probe_ids: torch.Tensor, thresholds: Thresholds | None = None) -> list[dict]:
    """Per-block statistics of one forward pass of `probe_ids` [sequences, tokens] (model in eval mode).

    Per block: `top1` = largest |activation| over all probe sequences (and where it is),
    `median` = mean over sequences of each sequence's median |activation| (as a scan computes it),
    `ratio` = top1 / median, `num_massive` = entries passing the criterion, summed over sequences;
    per sequence its own top entry: `top1_on_bos` = the share of sequences whose top entry is at position 0
    (BOS, or the sink token), `top1_dim` = the dim most of them are in, `dim_constancy` = their share in it.
    """
    thresholds = thresholds or Thresholds()
    structure = find_structure(model)
    was_training = model.training
    model.eval()
    try:
        with capture_block_stats(model, structure, top_k=1, thresholds=thresholds) as collector:
            run_forward(model, probe_ids)
            sequences = collector.pop()
    finally:
        model.train(was_training)
    rows = []
    for block in range(len(structure)):
        records = [seq.blocks[block] for seq in sequences]
        best = max(records, key=lambda r: float(r.top_magnitudes[0]))
        top1 = float(best.top_magnitudes[0])
        median = sum(r.median for r in records) / len(records)
        dims = Counter(int(r.top_dims[0]) for r in records)
        modal = max(dims, key=lambda d: (dims[d], d == int(best.top_dims[0])))
        rows.append(
            {
                "block": block,
                "top1": top1,
                "median": median,
                "ratio": top1 / median if median > 0 else math.inf,
                "top_token": int(best.top_tokens[0]),
                "top_dim": int(best.top_dims[0]),
                "num_massive": sum(int(r.massive_values.numel()) for r in records),
                "top1_on_bos": sum(int(r.top_tokens[0]) == 0 for r in records) / len(records),
                "top1_dim": modal,
                "dim_constancy": dims[modal] / len(records),
            }
        )
    return rows


class ActivationMonitor:
    """Records per-block top-1 / median / ratio on a fixed probe batch every `every` steps."""

    def __init__(
        self,
        probe_ids: torch.Tensor,
        every: int = 100,
        out_dir: Path | None = None,
        thresholds: Thresholds | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.probe_ids = probe_ids
        self.every = every
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.thresholds = thresholds or Thresholds()
        self.rows: list[dict] = []
        self._writer = None
        if tensorboard and self.out_dir is not None:
            self._writer = _tensorboard_writer(self.out_dir / "tensorboard")

    def due(self, step: int) -> bool:
        return step % self.every == 0 and not any(r["step"] == step for r in self.rows[-1:])

    def record(self, model: nn.Module, step: int) -> list[dict]:
        """Measure now (whatever the step) and append the rows; files are rewritten."""
        extremes = extreme_token_measures(model, self.probe_ids)
        stats = probe_statistics(model, self.probe_ids, self.thresholds)
        rows = [{"step": step, **row, **extra} for row, extra in zip(stats, extremes, strict=True)]
        self.rows = [r for r in self.rows if r["step"] != step] + rows
        if self._writer is not None:
            for row in rows:
                for name in ("top1", "median", "ratio", "sink_rate", "residual_peak", "value_drain", "kurtosis"):
                    self._writer.add_scalar(f"massact/block{row['block']:02d}/{name}", row[name], step)
            self._writer.add_scalar("massact/max_top1", max(r["top1"] for r in rows), step)
            self._writer.flush()
        self.save()
        return rows

    def step(self, model: nn.Module, step: int) -> list[dict] | None:
        """Call after every optimizer step of a plain loop; measures when `step` is due."""
        return self.record(model, step) if self.due(step) else None

    def emergence(self) -> list[dict]:
        """Per recorded step: the `site`'s top-1, block and ratio, and `summarize_blocks`."""
        by_step: dict[int, list[dict]] = {}
        for row in self.rows:
            by_step.setdefault(row["step"], []).append(row)
        out = []
        for step in sorted(by_step):
            top = site(by_step[step])
            out.append(
                {
                    "step": step,
                    "top1": top["top1"],
                    "block": top["block"],
                    "ratio": top["ratio"],
                    **summarize_blocks(by_step[step]),
                }
            )
        return out

    def restore(self, rows: list[dict], up_to_step: int) -> None:
        """Take back the rows of a resumed run (those not after its checkpoint)."""
        self.rows = [dict(r) for r in rows if r["step"] <= up_to_step]

    def save(self) -> None:
        if self.out_dir is None:
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.out_dir / "monitor.csv", text.getvalue())
        data = {
            "thresholds": self.thresholds.to_json(),
            "probe_shape": list(self.probe_ids.shape),
            "rows": self.rows,
            "emergence": self.emergence(),
        }
        atomic_write_text(self.out_dir / "monitor.json", to_json_text(data) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def trainer_callback(self) -> MonitorCallback:
        """This monitor as a transformers `TrainerCallback`."""
        return MonitorCallback(self)


class MonitorCallback(TrainerCallback):
    """Runs an `ActivationMonitor` at the end of each due `Trainer` step (main process only)."""

    def __init__(self, monitor: ActivationMonitor) -> None:
        self.monitor = monitor

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.is_world_process_zero:
            self.monitor.step(model, state.global_step)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.monitor.close()
        return control
