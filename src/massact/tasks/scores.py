"""Accuracy per task as the harness scored it: JSON, a terminal table and markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from massact.format import fmt_number, md_escape
from massact.html.registry import result_kind
from massact.outputs import write_json
from massact.report.tables import numeric_column, print_table


def _number(value: object) -> float | None:
    """A finite float from a harness metric value ("N/A" and NaN become None)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
        return float(value)
    return None


def percent(value: float | None) -> str:
    """0.6895 -> '68.95'; missing -> '-'."""
    return fmt_number(None if value is None else 100 * value)


TASK_FIELDS = ("samples", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


@dataclass(frozen=True)
class TaskScore:
    """One task's (or group's) accuracy, as fractions in [0, 1]."""

    task: str
    samples: int | None
    acc: float | None
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    group: bool = False

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "acc": self.acc,
            "acc_stderr": self.acc_stderr,
            "acc_norm": self.acc_norm,
            "acc_norm_stderr": self.acc_norm_stderr,
            "group": self.group,
        }

    @classmethod
    def from_json(cls, task: str, data: dict) -> TaskScore:
        return cls(task=task, **{k: data.get(k) for k in TASK_FIELDS}, group=bool(data.get("group", False)))

    def cell(self) -> str:
        """'acc (acc_norm)' in percent, acc alone when the task has no acc_norm."""
        if self.acc_norm is None:
            return percent(self.acc)
        return f"{percent(self.acc)} ({percent(self.acc_norm)})"


@result_kind("tasks", "tasks.json")
@dataclass(frozen=True)
class TaskScores:
    """Scores of every evaluated task, with how they were obtained."""

    scores: tuple[TaskScore, ...]
    harness_version: str
    num_fewshot: int
    limit: int | None

    @classmethod
    def from_harness(cls, results: dict, version: str, num_fewshot: int, limit: int | None) -> TaskScores:
        """Read `lm_eval.simple_evaluate`'s result dict (metrics under the 'none' filter)."""
        groups = set(results.get("groups", {}))
        samples = results.get("n-samples", {})
        scores = []
        for name, metrics in results["results"].items():
            count = samples.get(name, {}).get("effective")
            scores.append(
                TaskScore(
                    task=name,
                    samples=int(count) if count is not None else None,
                    acc=_number(metrics.get("acc,none")),
                    acc_stderr=_number(metrics.get("acc_stderr,none")),
                    acc_norm=_number(metrics.get("acc_norm,none")),
                    acc_norm_stderr=_number(metrics.get("acc_norm_stderr,none")),
                    group=name in groups,
                )
            )
        return cls(tuple(scores), version, num_fewshot, limit)

    @classmethod
    def from_json(cls, data: dict) -> TaskScores:
        """Back from `to_json()` (e.g. the `tasks` of a saved result row)."""
        scores = tuple(TaskScore.from_json(name, entry) for name, entry in data["tasks"].items())
        return cls(scores, data["harness_version"], data["num_fewshot"], data["limit"])

    @property
    def names(self) -> list[str]:
        return [s.task for s in self.scores]

    def __getitem__(self, task: str) -> TaskScore:
        for score in self.scores:
            if score.task == task:
                return score
        raise KeyError(task)

    @property
    def mean_acc(self) -> float | None:
        """Mean accuracy over the tasks (not groups) that have one: the paper's 'mean zero-shot accuracy'."""
        values = [s.acc for s in self.scores if s.acc is not None and not s.group]
        return sum(values) / len(values) if values else None

    def cell(self, task: str) -> str:
        return self[task].cell()

    def describe(self) -> str:
        """'lm-eval 0.4.13, 0-shot, all items' (or 'first N items per task')."""
        items = "all items" if self.limit is None else f"first {self.limit} items per task"
        return f"lm-eval {self.harness_version}, {self.num_fewshot}-shot, {items}"

    def to_json(self) -> dict:
        return {
            "harness": "lm-eval",
            "harness_version": self.harness_version,
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "mean_acc": self.mean_acc,
            "tasks": {s.task: s.to_json() for s in self.scores},
        }

    @staticmethod
    def _cells(s: TaskScore) -> list[str]:
        """items, acc, its standard error, acc_norm, its standard error (percent)."""
        stderr = "" if s.acc_stderr is None else percent(s.acc_stderr)
        norm_stderr = "" if s.acc_norm_stderr is None else percent(s.acc_norm_stderr)
        items = "" if s.samples is None else str(s.samples)
        return [items, percent(s.acc), stderr, percent(s.acc_norm), norm_stderr]

    def table(self, title: str | None = None) -> Table:
        table = Table(title=title or f"zero-shot accuracy, % ({self.describe()})", title_justify="left")
        table.add_column("task", overflow="fold")
        for name in ("items", "acc", "±", "acc_norm", "± "):
            numeric_column(table, name)
        for s in self.scores:
            table.add_row(s.task, *self._cells(s))
        if len([s for s in self.scores if not s.group]) > 1:
            table.add_row("mean", "", percent(self.mean_acc), "", "", "")
        return table

    def show(self, console: Console) -> None:
        print_table(console, self.table())

    def markdown_lines(self) -> list[str]:
        lines = [
            f"Zero-shot accuracy in % ({self.describe()}); ± is the harness's standard error.",
            "",
            "| task | items | acc | ± | acc_norm | ± |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for s in self.scores:
            cells = [md_escape(s.task), *self._cells(s)]
            lines.append("| " + " | ".join(cells) + " |")
        if len([s for s in self.scores if not s.group]) > 1:
            lines.append(f"| mean | | {percent(self.mean_acc)} | | | |")
        return lines

    def write(self, out: Path) -> None:
        write_json(out / "tasks.json", self.to_json())
        text = "\n".join(["# massact zero-shot tasks", "", *self.markdown_lines()]) + "\n"
        (out / "report.md").write_text(text, encoding="utf-8")
