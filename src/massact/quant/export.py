"""Exports for quantization and KV-cache tools, measured in one pass over corpus windows.

Formats (each one file another tool can read):

- `sites` -> `sites.json`: the massive sites (block, dim, token kind) with their mean, std and count over
  the windows, in the `means.json` layout the intervention command loads (`--means`), plus the dims,
  blocks and token strings that carry them;
- `act-scales` -> `act_scales.pt`: for every Linear (and Conv1D) of the model, the maximum |x| of each
  input channel over all tokens, keyed by module name: SmoothQuant's own act-scales file (a
  `torch.save` dict, as its `act_scales/*.pt`), which its `smooth_lm(model, torch.load(path), alpha)` reads;
- `outlier-tokens` -> `outlier_tokens.json`: the token ids and strings that carry massive activations,
  ranked by how often they do over the windows (for tools that keep such tokens as a fixed KV-cache
  prefix or never evict them);
- `recipe` -> `recipe.yaml`: an llm-compressor recipe, SmoothQuant with the measured norm -> Linear
  mappings, then W8A8 with the Linears that see massive inputs kept in higher precision (`ignore`);
- `imatrix` -> `imatrix.gguf`: a llama.cpp importance matrix for `llama-quantize --imatrix` (see
  `massact.quant.imatrix`); asked for by name, not part of `all` (it needs an architecture llama.cpp knows).

Every export folder also gets `report.md`, which says what each file holds and how to use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from rich.console import Console

from massact.capture.forward import walk_windows
from massact.capture.peaks import BlockPeaks, linear_inputs
from massact.capture.stats import SequenceRecord, capture_block_stats
from massact.corpus.summary import CorpusSummary
from massact.detect import Thresholds, feature_dims
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.outputs import write_json
from massact.precision import Precision
from massact.progress import say, steps
from massact.quant.export_report import export_markdown, tool_line
from massact.quant.imatrix import IMATRIX_FILE, Imatrix, InputSquares
from massact.quant.recipe import kept_linears, recipe, smoothing_mappings
from massact.tokens import TokenText

FILES = {
    "sites": "sites.json",
    "act-scales": "act_scales.pt",
    "outlier-tokens": "outlier_tokens.json",
    "recipe": "recipe.yaml",
    "imatrix": IMATRIX_FILE,
}
FORMATS = tuple(name for name in FILES if name != "imatrix")  # what `all` writes
SITES_FORMAT = "massact-sites/1"
TOKENS_FORMAT = "massact-outlier-tokens/1"
EXPORT_KIND = "export"  # the `kind` field of the JSON `massact export --json` prints
MAPPING_TOKENS = 16  # tokens of the pass that finds which norm feeds which Linears


def parse_formats(values: Iterable[str]) -> list[str]:
    """`--format` values (repeated or comma-separated, `all` for every one) -> known format names."""
    chosen: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name == "all":
                chosen.extend(FORMATS)
            elif name in FILES:
                chosen.append(name)
            else:
                raise MassactError(f"--format {name!r} does not exist; use one or more of {', '.join(FILES)}, or all")
    if not chosen:
        raise MassactError(f"give --format: one or more of {', '.join(FILES)}, or all")
    return list(dict.fromkeys(chosen))


@dataclass
class TokenCount:
    """How often one token id carries a massive activation (any block, any dim) over the windows."""

    count: int = 0  # occurrences that carry one
    at_first: int = 0  # of those, at a window's first position
    max_abs: float = 0.0
    dims: set[int] = field(default_factory=set)
    blocks: set[int] = field(default_factory=set)


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
        """The llm-compressor recipe (see `massact.quant.recipe`)."""
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


def _count_tokens(
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


def measure_exports(
    loaded: LoadedModel,
    windows: torch.Tensor,
    *,
    corpus: str = "corpus",
    seed: int = 0,
    batch_size: int = 8,
    thresholds: Thresholds | None = None,
    act_scales: bool = True,
    recipe: bool = False,
    imatrix: bool = False,
    alpha: float = 0.5,
    blocks_path: str | None = None,
    progress: bool = True,
    prefix_tokens: list[str] | None = None,
    description: str = "export",
) -> ExportResult:
    """One pass over `windows` [N, L] (no padding): massive sites, outlier tokens and, if asked, act scales
    and the llm-compressor recipe (its smoothing mappings from one more pass over a few tokens).

    `prefix_tokens` names what every window starts with (the tokenizer's BOS; see `text_prefix`);
    `description` labels the progress bar.
    """
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise MassactError("no windows to export from; give --samples of at least 1")
    thresholds = thresholds or Thresholds()
    model = loaded.model
    structure = find_structure(model, blocks_path)
    texts = TokenText(loaded.tokenizer)
    scales = linear_inputs(model) if act_scales or recipe else None
    squares = InputSquares(model) if imatrix else None  # refuses an architecture llama.cpp's names do not know
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
                    loaded.name, hidden, len(structure), thresholds, 3, windows.shape[1],
                    prefix_tokens=list(prefix_tokens or []),
                )  # fmt: skip
            tokens, kinds = texts.kinds_and_texts(row_ids, 0)
            summary.add(record, corpus, start + offset, tokens, kinds)
            for dim, share in _count_tokens(record, row_ids, counts, thresholds).items():
                features[dim] = max(features.get(dim, 0.0), share)

    count = windows.shape[0]
    blockwise = loaded.offload is not None  # block by block, windows arrive after the last block: its own bar
    with ExitStack() as stack:
        collector = stack.enter_context(capture_block_stats(model, structure, top_k=3, thresholds=thresholds))
        peaks = stack.enter_context(BlockPeaks(model, structure))
        if scales is not None:
            stack.enter_context(scales)
        if squares is not None:
            stack.enter_context(squares)
        shown = stack.enter_context(steps(count, description, unit="windows", enabled=progress and not blockwise))

        def consume_shown(start: int, ids: torch.Tensor, output: object) -> None:
            consume(start, ids, output)
            shown.advance(len(ids), note=f"{len(counts)} token ids carry massive activations so far")

        walk_windows(
            model, windows, batch_size, consume_shown, description=description, progress=progress and blockwise
        )
    maxima = scales.maxima if scales is not None else {}
    if recipe and progress:
        say(f"{description}: which norm feeds which Linears (one more pass over {MAPPING_TOKENS} tokens)")
    mappings = smoothing_mappings(model, structure, windows[:1, :MAPPING_TOKENS]) if recipe else []
    kept = kept_linears(maxima, model, thresholds.abs) if recipe else []
    all_ids, frequency = torch.unique(windows, return_counts=True)
    occurrences = dict(zip(all_ids.tolist(), frequency.tolist(), strict=True))
    return ExportResult(
        model=loaded.name,
        corpus=corpus,
        windows=list(windows.shape),
        seed=seed,
        thresholds=thresholds,
        summary=summary.canonical() if summary is not None else None,
        act_scales=maxima,
        token_counts=counts,
        occurrences={i: occurrences[i] for i in counts},
        texts={i: texts.text(i) for i in counts},
        mappings=mappings,
        kept=kept,
        alpha=alpha,
        precision=Precision.from_peaks(peaks),
        features=dict(sorted(features.items())),
        imatrix=squares.result([corpus], *windows.shape) if squares is not None else None,
    )


def read_export(path: str | Path) -> dict | dict[str, torch.Tensor]:
    """Read back any export file: JSON and YAML as dicts, act scales as {module name: tensor}."""
    path = Path(path)
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    if path.suffix == ".yaml":
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    return json.loads(path.read_text(encoding="utf-8"))
