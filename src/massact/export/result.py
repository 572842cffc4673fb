"""What `massact export` found and the files it writes: `ExportResult` (one measure, every format's content and
writer), `ExportFiles` (the formats chosen: JSON, terminal, folder) and `read_export`, which reads any file back."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from rich.console import Console

from massact.corpus.measure import TokenCount
from massact.corpus.summary import CorpusSummary
from massact.detect import Thresholds
from massact.export.config import FILES
from massact.export.imatrix import Imatrix
from massact.export.recipe import recipe
from massact.export.report import export_markdown, tool_line
from massact.html.registry import result_kind
from massact.outputs import write_json
from massact.precision import Precision

SITES_FORMAT = "massact-sites/1"
TOKENS_FORMAT = "massact-outlier-tokens/1"
EXPORT_KIND = "export"  # the `kind` field of the JSON `massact export --json` prints


@dataclass
class ExportResult:
    """What one pass over the windows measured; `write` puts the chosen formats on disk."""

    model: str
    corpus: str
    windows: list[int]  # [samples, seq_len]
    seed: int
    thresholds: Thresholds
    summary: CorpusSummary | None
    act_scales: dict[str, torch.Tensor]
    token_counts: dict[int, TokenCount]
    occurrences: dict[int, int]
    texts: dict[int, str]
    mappings: list[list] = field(default_factory=list)  # SmoothQuant [[balance Linears], norm] pairs
    kept: list[str] = field(default_factory=list)  # Linears the recipe leaves unquantized
    alpha: float = 0.5
    precision: Precision | None = None  # whether the run's dtype held the block outputs
    features: dict[int, float] = field(default_factory=dict)  # outlier features: dim -> largest token share
    imatrix: Imatrix | None = None  # llama.cpp importance matrix, when asked for

    @property
    def has_massive(self) -> bool:
        return bool(self.token_counts)

    def sites(self) -> dict:
        base = self.summary.means() if self.summary is not None else {"sites": []}
        rows = self.summary.site_rows() if self.summary is not None else []
        tokens = {(r["block"], r["dim"], r["token_kind"]): r["tokens"] for r in rows}
        for site in base["sites"]:
            site["tokens"] = tokens.get((site["block"], site["dim"], site["token_kind"]), [])
        sites = base["sites"]
        return {
            "format": SITES_FORMAT,
            **base,
            "corpus": self.corpus,
            "window_shape": self.windows,  # `windows` stays the means layout's {source: [window indices]}
            "seed": self.seed,
            "thresholds": self.thresholds.to_json(),
            "dims": sorted({s["dim"] for s in sites}),
            "token_kinds": sorted({s["token_kind"] for s in sites}),
            "blocks": sorted({s["block"] for s in sites}),
        }

    def outlier_tokens(self) -> dict:
        samples = self.windows[0]
        first = sum(c.at_first for c in self.token_counts.values())
        ranked = sorted(self.token_counts.items(), key=lambda item: (-item[1].count, item[0]))
        return {
            "format": TOKENS_FORMAT,
            "model": self.model,
            "corpus": self.corpus,
            "windows": self.windows,
            "seed": self.seed,
            "thresholds": self.thresholds.to_json(),
            "first_position": {"windows": samples, "carrying": first, "rate": first / samples if samples else 0.0},
            "tokens": [
                {
                    "token_id": token_id,
                    "token": self.texts[token_id],
                    "count": c.count,
                    "at_first_position": c.at_first,
                    "elsewhere": c.count - c.at_first,
                    "occurrences": self.occurrences[token_id],
                    "rate": c.count / self.occurrences[token_id],
                    "max_abs": c.max_abs,
                    "dims": sorted(c.dims),
                    "blocks": [min(c.blocks), max(c.blocks)],
                }
                for token_id, c in ranked
            ],
        }

    def recipe(self) -> dict:
        """The llm-compressor recipe (see `massact.export.recipe`)."""
        return recipe(self.mappings, self.kept, self.alpha)

    def write(self, directory: Path, formats: Iterable[str]) -> list[Path]:
        written = []
        for name in formats:
            path = Path(directory) / FILES[name]
            if name == "sites":
                write_json(path, self.sites())
            elif name == "outlier-tokens":
                write_json(path, self.outlier_tokens())
            elif name == "recipe":
                header = f"# llm-compressor recipe for {self.model}, written by massact export (see report.md)\n"
                body = yaml.safe_dump(self.recipe(), sort_keys=False, default_flow_style=None)
                path.write_text(header + body, encoding="utf-8")
            elif name == "imatrix" and self.imatrix is not None:
                self.imatrix.write(path)
            else:
                torch.save({k: v.contiguous() for k, v in self.act_scales.items()}, path)
            written.append(path)
        return written


@result_kind(EXPORT_KIND, None)
@dataclass
class ExportFiles:
    """An export with the formats chosen: what `massact export` prints and writes."""

    result: ExportResult
    formats: list[str]
    execution: dict | None = None  # how the run executed: `LoadedModel.execution`

    def to_json(self) -> dict:
        r = self.result
        data: dict = {
            "kind": EXPORT_KIND,
            "model": r.model,
            "corpus": r.corpus,
            "windows": r.windows,
            "seed": r.seed,
            "formats": self.formats,
            "files": [FILES[name] for name in self.formats],
        }
        if "sites" in self.formats:
            data["sites"] = r.sites()
        if "outlier-tokens" in self.formats:
            data["outlier_tokens"] = r.outlier_tokens()
        if "act-scales" in self.formats:
            data["act_scales"] = {name: float(m.max()) if m.numel() else 0.0 for name, m in r.act_scales.items()}
        if "recipe" in self.formats:
            data["recipe"] = r.recipe()
        if "imatrix" in self.formats and r.imatrix is not None:
            data["imatrix"] = r.imatrix.to_json()
        data["precision"] = r.precision.to_json() if r.precision else None
        data["execution"] = self.execution
        return data

    def show(self, console: Console) -> None:
        r = self.result
        if r.precision is not None:
            r.precision.show(console)
        if not r.has_massive:
            t = r.thresholds
            console.print(
                f"No massive activations in {r.windows[0]} windows of {r.windows[1]} tokens (|x| > {t.abs:g} and "
                f">= {t.ratio:g} x median): the site and token lists are empty.",
                highlight=False,
            )
            self.show_files(console)
            return
        sites = r.sites()
        tokens = r.outlier_tokens()["tokens"]
        console.print(
            f"{len(sites['sites'])} massive sites in {'dim' if len(sites['dims']) == 1 else 'dims'} "
            f"{', '.join(map(str, sites['dims']))}, "
            f"blocks {sites['blocks'][0]}..{sites['blocks'][-1]}; {len(tokens)} token ids carry them",
            highlight=False,
        )
        self.show_files(console)

    def show_files(self, console: Console) -> None:
        """One line per file: which tool reads it."""
        for name in self.formats:
            console.print(tool_line(name, FILES[name]), highlight=False, markup=False)

    def write(self, out: Path) -> None:
        self.result.write(out, self.formats)
        report = export_markdown(self.result, self.formats, FILES)
        (Path(out) / "report.md").write_text(report + "\n", encoding="utf-8")


def read_export(path: str | Path) -> dict | dict[str, torch.Tensor]:
    """Read back any export file: JSON and YAML as dicts, act scales as {module name: tensor}."""
    path = Path(path)
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    if path.suffix == ".yaml":
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    return json.loads(path.read_text(encoding="utf-8"))
