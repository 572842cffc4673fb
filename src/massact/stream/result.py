"""What a streaming run found: a row per policy, running perplexity, and the detected sink tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from massact.format import md_code, md_escape
from massact.html.registry import result_kind
from massact.outputs import write_json
from massact.precision import Precision
from massact.stream.config import StreamConfig
from massact.stream.decode import PolicyRun
from massact.stream.figures import plot_running_perplexity

KIND = "stream"  # the `kind` field of the JSON: which result this is

MAX_CURVE_POINTS = 400
DETECTION_NOTE = (
    "detected = tokens whose block output passed the massive-activation criterion when they arrived "
    "(|x| > abs and >= ratio x the block's median over the stream so far, judged a few steps later so that "
    "the first token has others to be compared with), kept for the whole stream; massive activations "
    "rather than attention probabilities, because block outputs reach forward hooks under any attention "
    "kernel (fused SDPA returns no probabilities) and the massive tokens are the ones that become sinks"
)


@dataclass
class TokenStream:
    """The token ids a run decodes, and where they came from."""

    ids: torch.Tensor  # [tokens]
    prefix: list[str] = field(default_factory=list)  # token strings the tokenizer puts before a text
    source: str = "ids"
    offset: int = 0
    texts: list[str] = field(default_factory=list)  # decoded text of each token (may be empty)

    def text(self, position: int) -> str:
        return self.texts[position] if position < len(self.texts) else ""


def _perplexity(nll: torch.Tensor) -> float:
    if nll.numel() == 0:
        return math.nan
    mean = float(nll.mean())
    return math.exp(mean) if mean < 709.0 else (math.inf if mean == mean else math.nan)


@result_kind(KIND, "stream.json")
@dataclass
class StreamResult:
    model: str
    stream: TokenStream
    config: StreamConfig
    runs: list[PolicyRun]
    seconds: list[float]
    precision: Precision | None = None  # whether the run's dtype held the block outputs

    @property
    def score_from(self) -> int:
        return self.config.first_scored()

    def running(self, run: PolicyRun) -> tuple[list[int], list[float]]:
        """exp(mean NLL of the predictions so far) at each scored token index, thinned to a few hundred points."""
        if run.nll.numel() == 0:
            return [], []
        cumulative = run.nll.cumsum(0) / torch.arange(1, run.nll.numel() + 1, dtype=torch.float64)
        step = max(1, math.ceil(run.nll.numel() / MAX_CURVE_POINTS))
        picks = list(range(step - 1, run.nll.numel(), step))
        if picks[-1] != run.nll.numel() - 1:
            picks.append(run.nll.numel() - 1)
        return [self.score_from + i for i in picks], [math.exp(min(float(cumulative[i]), 709.0)) for i in picks]

    def rows(self) -> list[dict]:
        tokens = self.stream.ids.numel()
        out = []
        for run, seconds in zip(self.runs, self.seconds):
            out.append(
                {
                    "policy": run.policy.name,
                    "cache": run.cache,
                    "kept_tokens": run.kept,
                    "perplexity": _perplexity(run.nll),
                    "tokens_scored": int(run.nll.numel()),
                    "seconds": round(seconds, 3),
                    "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
                }
            )
        return out

    def detection(self) -> dict | None:
        runs = [r for r in self.runs if r.policy.needs_detection]
        if not runs:
            return None
        run = runs[0]
        return {
            "method": "massive activations on arrival",
            "why": DETECTION_NOTE,
            "thresholds": self.config.thresholds.to_json(),
            "max_kept": self.config.max_detected,
            "judged_after_steps": run.judging_delay,
            "tokens": [dict(t.to_json(), text=self.stream.text(t.position)) for t in run.detected],
            "not_kept": run.detected_dropped,
        }

    def to_json(self) -> dict:
        curves = {}
        for run in self.runs:
            index, values = self.running(run)
            curves[run.policy.name] = {"token": index, "perplexity": values}
        return {
            "kind": KIND,
            "model": self.model,
            "stream": {
                "source": self.stream.source,
                "offset": self.stream.offset,
                "tokens": int(self.stream.ids.numel()),
                "prefix_tokens": self.stream.prefix,
            },
            "cache": self.config.cache,
            "positions": self.config.positions,
            "score_from": self.score_from,
            "stride": self.config.stride,
            "rows": self.rows(),
            "running_perplexity": curves,
            "detected": self.detection(),
            "precision": self.precision.to_json() if self.precision else None,
        }

    def _caption(self) -> str:
        tokens = self.stream.ids.numel()
        return (
            f"{tokens} tokens from {self.stream.source} (offset {self.stream.offset}), decoded one at a time; "
            f"cache W = {self.config.cache}, positions {self.config.positions}; perplexity of the predictions of "
            f"tokens {self.score_from}..{tokens - 1}"
        )

    def _kept_text(self, run: PolicyRun) -> str:
        if not run.kept:
            return "-"
        shown = ", ".join(f"{p} {self.stream.text(p)!r}" if self.stream.texts else str(p) for p in run.kept[:6])
        return shown + (f" +{len(run.kept) - 6}" if len(run.kept) > 6 else "")

    def show(self, console: Console) -> None:
        if not console.is_terminal:
            console.width = max(console.width, 140)
        table = Table(title=f"{self.model}: which tokens must stay in a bounded KV cache", caption=self._caption())
        table.add_column("policy", no_wrap=True)
        table.add_column("cache", justify="right", no_wrap=True)
        table.add_column("sink tokens (kept for the whole stream)")
        for name in ("perplexity", "scored", "tok/s"):
            table.add_column(name, justify="right", no_wrap=True)
        for run, row in zip(self.runs, self.rows()):
            table.add_row(
                row["policy"],
                str(row["cache"]),
                self._kept_text(run),
                f"{row['perplexity']:.2f}",
                str(row["tokens_scored"]),
                "-" if row["tokens_per_second"] is None else f"{row['tokens_per_second']:.1f}",
            )
        console.print(table)
        detection = self.detection()
        if detection is not None:
            found = ", ".join(
                f"{t['position']} {t['text']!r} (|x| {t['value']:.0f} in dim {t['dim']}, block {t['block']})"
                for t in detection["tokens"]
            )
            console.print(f"detected: {found or 'no token'}", highlight=False)
            console.print(DETECTION_NOTE, highlight=False, style="dim")
        if self.precision is not None:
            self.precision.show(console)

    def report(self, figure: str) -> str:
        lines = [
            f"# Streaming with a bounded KV cache: {md_escape(self.model)}",
            "",
            md_escape(self._caption()) + ".",
            "",
            "| policy | cache | sink tokens (kept for the whole stream) | perplexity | scored | tok/s |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for run, row in zip(self.runs, self.rows()):
            speed = "-" if row["tokens_per_second"] is None else f"{row['tokens_per_second']:.1f}"
            lines.append(
                f"| {md_escape(row['policy'])} | {row['cache']} | {md_escape(self._kept_text(run))} "
                f"| {row['perplexity']:.2f} "
                f"| {row['tokens_scored']} | {speed} |"
            )
        if self.precision is not None and self.precision.warning:
            lines += ["", *self.precision.markdown()]
        detection = self.detection()
        if detection is not None:
            lines += ["", "## Detected sink tokens", "", md_escape(DETECTION_NOTE) + ".", ""]
            for t in detection["tokens"]:
                lines.append(
                    f"- token {t['position']} {md_code(t['text'], table=False)}: |x| = {t['value']:.1f} "
                    f"in dim {t['dim']} at block "
                    f"{t['block']} (running median {t['median']:.3g}; massive in blocks {t['massive_blocks']})"
                )
            if not detection["tokens"]:
                lines.append("- no token passed the criterion")
        lines += ["", "## Running perplexity", "", f"![running perplexity per policy]({figure})"]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> None:
        write_json(out / "stream.json", self.to_json())
        curves = {run.policy.name: self.running(run) for run in self.runs}
        plot_running_perplexity(
            curves, out / "running_perplexity.png", f"{self.model}: running perplexity, cache {self.config.cache}"
        )
        (out / "report.md").write_text(self.report("running_perplexity.png"), encoding="utf-8")
