"""What a trace found: the traced sites, their weight entries, the verification and the int8 risk table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from massact.detect import Thresholds
from massact.html.registry import result_kind
from massact.outputs import write_json
from massact.precision import Precision
from massact.trace.report import markdown_report, terminal_report
from massact.trace.writer import SiteTrace

KIND = "trace"  # the `kind` field of the JSON: which result this is


@result_kind(KIND, "trace.json")
@dataclass
class TraceResult:
    """The traced sites of one prompt, plus (when run) their verification by intervention."""

    model: str
    prompt: str
    tokens: list[str]
    kinds: list[str]
    thresholds: Thresholds
    sites: list[SiteTrace]
    massive_sites: list[dict]
    input_ids: list[int] = field(default_factory=list)
    verification: dict | None = None
    quant_risk: list[dict] | None = None
    windows: dict | None = None  # corpus, samples, seq_len, seed, prefix_tokens of the perplexity / risk windows
    top: int = 10  # entries shown per site in the terminal and report.md
    precision: Precision | None = None  # whether the run's dtype held the prompt's block outputs
    execution: dict | None = None  # how the run executed: `LoadedModel.execution`

    def entries(self) -> list[dict]:
        """Every reported weight entry, flat, with its site."""
        rows = []
        for site in self.sites:
            for rank, entry in enumerate(site.entries, 1):
                rows.append({"site": {"token": site.token, "dim": site.dim}, "rank": rank, **entry.__dict__})
        return rows

    def to_json(self) -> dict:
        return {
            "kind": KIND,
            "model": self.model,
            "prompt": self.prompt,
            "tokens": self.tokens,
            "token_kinds": self.kinds,
            "thresholds": self.thresholds.to_json(),
            "massive_sites": self.massive_sites,
            "sites": [site.to_json() for site in self.sites],
            "entries": self.entries(),
            "verification": self.verification,
            "quant_risk": self.quant_risk,
            "windows": self.windows,
            "prefix_tokens": (self.windows or {}).get("prefix_tokens", []),
            "precision": self.precision.to_json() if self.precision else None,
            "execution": self.execution,
        }

    def show(self, console: Console) -> None:
        terminal_report(self, console, limit=self.top)
        if self.precision is not None:
            self.precision.show(console)

    def write(self, out: Path) -> None:
        """trace.json and report.md into `out`."""
        report = markdown_report(self, limit=self.top)
        if self.precision is not None and self.precision.warning:
            report += "\n" + "\n".join(self.precision.markdown())
        (out / "report.md").write_text(report, encoding="utf-8")
        write_json(out / "trace.json", self.to_json())
