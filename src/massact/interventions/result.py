"""`InterventionResult`: the perplexity table per mode and corpus, as JSON, terminal view and report.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from massact.format import fmt_ppl, md_code, md_escape
from massact.html.registry import result_kind
from massact.interventions.config import InterventionConfig
from massact.interventions.means import MEANS_JSON, SiteMeans
from massact.interventions.phrasing import blocks_phrase, blocks_span
from massact.interventions.survey import Survey
from massact.outputs import write_json
from massact.precision import Precision
from massact.report.spread import fmt_spread, seeds_note
from massact.report.tables import numeric_column, print_table
from massact.tasks import TaskScores
from massact.tasks.scores import percent

KIND = "interventions"  # the `kind` field of the JSON: which result this is

INTERVENE_JSON = "intervene.json"
REPORT_MD = "report.md"


@result_kind(KIND, INTERVENE_JSON)
@dataclass
class InterventionResult:
    """Perplexity of every (corpus, mode), the block map of the survey, and what a reader must know."""

    model: str
    blocks: list[int]
    rows: list[dict]
    survey: Survey
    after_zero: Survey | None
    means: SiteMeans | None
    means_source: str
    notes: list[str]
    config: InterventionConfig
    prefix_tokens: list[str] = field(default_factory=list)
    means_computed: bool = True  # the means were computed by this run (so written as means.json)
    command: str | None = None  # the command line, for report.md
    precision: Precision | None = None  # whether the run's dtype held the unchanged model's block outputs
    spread: dict | None = None  # with --seeds N: every row's perplexity over the N draws (mean, sd, values)
    execution: dict | None = None  # how the run executed: `LoadedModel.execution`

    @property
    def scored_per_window(self) -> int:
        """Tokens scored in each window: all but the prefix and the first token."""
        return self.config.seq_len - max(1, len(self.prefix_tokens))

    def sites_per_window(self, corpus: str, mode: str) -> float | None:
        row = next((r for r in self.rows if r["corpus"] == corpus and r["mode"] == mode), None)
        return None if row is None or mode == "original" else row["sites_per_window"]

    def to_json(self) -> dict:
        cfg = self.config
        return {
            "kind": KIND,
            "model": self.model,
            "corpora": list(cfg.corpora),
            "samples": cfg.samples,
            "seq_len": cfg.seq_len,
            "prefix_tokens": self.prefix_tokens,
            "scored_tokens_per_window": self.scored_per_window,
            "seed": cfg.seed,
            "blocks": self.blocks,
            "block_spec": cfg.block,
            "sites": cfg.sites.to_json(),
            "means_source": self.means_source,
            "rows": self.rows,
            "survey": self.survey.to_json(),
            "survey_after_zero": self.after_zero.to_json() if self.after_zero is not None else None,
            "notes": self.notes,
            "precision": self.precision.to_json() if self.precision else None,
            "seeds": self.spread,
            "execution": self.execution,
        }

    # -- views -----------------------------------------------------------------------------------
    def task_scores(self, mode: str) -> TaskScores | None:
        """The zero-shot task scores of `mode` (None without --tasks)."""
        row = next((r for r in self.rows if r["mode"] == mode and "tasks" in r), None)
        return TaskScores.from_json(row["tasks"]) if row else None

    def _task_columns(self) -> list[str]:
        first = self.task_scores(self.config.modes[0])
        if first is None:
            return []
        return [f"{name} acc (norm) %" for name in first.names] + (["mean acc %"] if len(first.names) > 1 else [])

    def _columns(self) -> list[str]:
        corpora = self.config.corpora
        if len(corpora) == 1:
            return [*corpora, "sites / window", *self._spread_columns(), *self._task_columns()]
        sites = [f"sites / window ({c})" for c in corpora]
        return [*corpora, *sites, *self._spread_columns(), *self._task_columns()]

    def _spread_columns(self) -> list[str]:
        if not self.spread:
            return []
        n = len(self.spread["seeds"])
        corpora = self.config.corpora
        return [f"mean ± sd, {n} seeds" + (f" ({c})" if len(corpora) > 1 else "") for c in corpora]

    def _spread_cells(self, mode: str) -> list[str]:
        if not self.spread:
            return []
        by_corpus = {r["corpus"]: r for r in self.spread["rows"] if r["mode"] == mode}
        return [fmt_spread(by_corpus[c]["perplexity"], fmt_ppl) if c in by_corpus else "-" for c in self.config.corpora]

    def _cells(self, mode: str) -> list[str]:
        corpora = self.config.corpora
        by_corpus = {r["corpus"]: r for r in self.rows if r["mode"] == mode}
        ppl = [fmt_ppl(by_corpus[c]["perplexity"]) if c in by_corpus else "-" for c in corpora]
        sites = [self.sites_per_window(c, mode) for c in corpora]
        scores = self.task_scores(mode)
        tasks = [] if scores is None else [scores.cell(n) for n in scores.names]
        if scores is not None and len(scores.names) > 1:
            tasks.append(percent(scores.mean_acc))
        return ppl + ["" if s is None else f"{s:.1f}" for s in sites] + self._spread_cells(mode) + tasks

    def scored_line(self) -> str:
        cfg = self.config
        prefix = " ".join(self.prefix_tokens)
        start = f"each window starts with {prefix} (not scored); " if prefix else ""
        return (
            f"{start}perplexity over {cfg.samples * self.scored_per_window:,} scored tokens per corpus "
            f"({cfg.samples} windows x {self.scored_per_window})"
        )

    def block_map_lines(self) -> list[str]:
        """Which blocks carry which massive dims, and the spikes below the criterion."""
        survey = self.survey
        lines = [f"massive dims on the {survey.sequences} surveyed windows (on at least half of them):"]
        for row in survey.dim_spans():
            line = f"  dim {row['dim']}: {blocks_phrase(row['blocks'])}"
            if row["below_criterion_blocks"]:
                line += (
                    f"; below the criterion at {blocks_phrase(row['below_criterion_blocks'])}"
                    f" (top value up to {row['below_criterion_max_ratio']:,.0f}x the median)"
                )
            lines.append(line)
        if len(lines) == 1:
            lines.append("  none")
        if survey.features:
            shown = ", ".join(f"dim {d} ({share:.0%} of tokens)" for d, share in survey.features.items())
            lines.append(f"outlier features, large on most tokens and never rewritten by default: {shown}")
        after = self.after_zero
        if after is not None:
            lines.append(
                f"with the zero intervention at block(s) {blocks_span(self.blocks)} ({after.sequences} windows):"
            )
            start = min(self.blocks)  # blocks before the hooked ones are not changed by it
            spans = [(row["dim"], [b for b in row["blocks"] if b >= start]) for row in after.dim_spans()]
            spans = [(dim, blocks) for dim, blocks in spans if blocks]
            lines += [f"  dim {dim}: massive at {blocks_phrase(blocks)}" for dim, blocks in spans]
            if not spans:
                lines.append(f"  no massive activation at blocks {start} and after")
        return lines

    def title(self) -> str:
        cfg = self.config
        return f"perplexity, {self.model}, {cfg.samples} x {cfg.seq_len} tokens, block(s) {blocks_span(self.blocks)}"

    def show(self, console: Console) -> None:
        table = Table()
        table.add_column("mode", no_wrap=True)
        for name in self._columns():
            numeric_column(table, escape(name))  # a corpus path is text, not markup
        for mode in self.config.modes:
            table.add_row(mode, *self._cells(mode))
        console.print(self.title(), highlight=False, markup=False, soft_wrap=True)
        print_table(console, table)
        for line in [self.scored_line(), *self.block_map_lines()]:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        for note in self.notes:
            console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        if self.precision is not None:
            self.precision.show(console)

    def markdown(self) -> str:
        cfg = self.config
        columns = self._columns()
        lines = [f"# massact intervene: {md_escape(self.model)}", ""]
        if self.command:
            lines += [md_code(self.command), ""]
        lines += [
            f"{cfg.samples} windows of {cfg.seq_len} tokens, block(s) {blocks_span(self.blocks)}, "
            f"means from {md_escape(self.means_source)}; {md_escape(self.scored_line())}.",
            "",
            "| mode | " + " | ".join(md_escape(c) for c in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        lines += [f"| {mode} | " + " | ".join(self._cells(mode)) + " |" for mode in cfg.modes]
        if self.precision is not None and self.precision.warning:
            lines += ["", *self.precision.markdown()]
        if self.spread:
            what = "the whole run (survey, means, block choice, random control)"
            lines += ["", seeds_note(self.spread["seeds"], "Perplexity columns", what)]
        if (scores := self.task_scores(cfg.modes[0])) is not None:
            lines += ["", f"Zero-shot tasks, acc (acc_norm) in %: {md_escape(scores.describe())}."]
        for line in self.block_map_lines():
            lines += [f"- {line.strip()}"] if line.startswith("  ") else ["", line, ""]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {md_escape(note)}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out: Path) -> None:
        """intervene.json, report.md, and means.json when this run computed the means."""
        write_json(out / INTERVENE_JSON, self.to_json())
        if self.means is not None and self.means_computed:
            write_json(out / MEANS_JSON, self.means.to_json())
        (out / REPORT_MD).write_text(self.markdown(), encoding="utf-8")
