"""The atlas of many models: atlas.json, a one-row-per-model table (terminal and atlas.md), a comparison figure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from massact.atlas.config import AtlasConfig
from massact.atlas.model_run import ModelRun
from massact.errors import MassactError
from massact.format import md_code, md_escape
from massact.html.registry import result_kind
from massact.html.views.atlas import atlas_charts
from massact.outputs import write_json
from massact.report.figures import plot_curves
from massact.report.tables import print_table

KIND = "atlas"  # the `kind` field of the JSON: which result this is

FORMAT = "massact-atlas/1"
ATLAS_JSON = "atlas.json"
ATLAS_MD = "atlas.md"
COMPARISON_PNG = "comparison.png"
W8A8_COSTLY = 1.1  # simulated W8A8 perplexity ratio above which a rotation is worth trying
COLUMNS = (
    "model",
    "architecture",
    "blocks",
    "hidden",
    "params",
    "massive dims",
    "token kinds",
    "massive blocks",
    "peak value",
    "peak ratio",
    "corpus cv",
    "super weights",
    "sink heads before / after",
    "fp16 peak / max",
    "bf16 peak / max",
    "fp8 E4M3 peak / max",
    "W8A8 ppl ratio (outlier tokens kept)",
)

TERMINAL_COLUMNS = (
    "model",
    "architecture",
    "blocks",
    "massive dims",
    "massive blocks",
    "peak value",
    "peak ratio",
    "corpus cv",
    "sink heads before / after",
    "fp16 peak / max",
    "W8A8 ppl ratio (outlier tokens kept)",
)

# the order in which terminal columns are left out when the screen is too narrow for them all
DROP_ORDER = (
    "corpus cv",
    "sink heads before / after",
    "architecture",
    "massive blocks",
    "blocks",
    "peak ratio",
    "W8A8 ppl ratio (outlier tokens kept)",
    "fp16 peak / max",
    "peak value",
    "massive dims",
)
MODEL_MIN_WIDTH = 24  # a longer model name folds over lines
PIPED_WIDTH = 10_000  # under a pipe nothing is wrapped or left out: each row is one line

SHORT = {
    "architecture": "arch",
    "massive dims": "dims",
    "massive blocks": "massive",
    "peak ratio": "ratio",
    "sink heads before / after": "sinks b/a",
    "fp16 peak / max": "fp16",
    "W8A8 ppl ratio (outlier tokens kept)": "W8A8 (kept)",
}


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _ratio(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _params(count) -> str:
    if not isinstance(count, int):
        return "-"
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count:,}"


def _headroom(row: dict, name: str) -> str:
    room = (row.get("headroom") or {}).get(name)
    if not room:
        return "-"
    over, ratio = room["first_overflow_block"], room["peak_over_max"]
    if ratio is None:
        return "-"
    return f"peak is {_num(ratio)}x the {name.replace('_', ' ')} max" + (
        "" if over is None else f", overflows at block {over}"
    )


def _cv(constancy: dict) -> str:
    """The coefficient of variation of the largest site over windows; n/a when it was seen in fewer than 2."""
    sites = constancy.get("sites") or []
    if not sites:
        return "-"
    if sites[0].get("cv") is None:
        return f"n/a ({sites[0].get('sequences', '?')} of {constancy.get('windows', '?')} windows)"
    return _num(sites[0]["cv"])


def cells(row: dict) -> list[str]:
    """One table row of text, in COLUMNS order; a failed model shows its reason."""
    if row.get("status") != "ok":
        return [row["model"], f"failed: {row.get('reason', '?')}"] + ["-"] * (len(COLUMNS) - 2)
    massive = row.get("massive") or {}
    constancy = row.get("constancy") or {}
    sinks = row.get("sink_heads") or {}
    quant = row.get("w8a8") or {}
    weights = row.get("super_weights") or []
    first, last = massive.get("first_block"), massive.get("last_block")
    return [
        row["model"],
        str(row.get("architecture", "-")),
        _num(row.get("num_blocks")),
        _num(row.get("hidden_size")),
        _params(row.get("parameters")),
        ", ".join(map(str, massive.get("dims") or [])) or ("-" if row.get("massive") is None else "none"),
        ", ".join(massive.get("token_kinds") or []) or "-",
        "-" if first is None else f"{first}-{last}",
        _num(massive.get("peak_value")),
        _num(massive.get("peak_ratio")),
        _cv(constancy),
        "; ".join(
            f"{w['module']} {w['coordinates']} ({_num(w['share_of_jump'], 2)} of jump)"
            for w in weights
            if w.get("coordinates")
        )
        or "-",
        f"{_num(sinks.get('before'), 2)} / {_num(sinks.get('after'), 2)}" if sinks else "-",
        _headroom(row, "fp16"),
        _headroom(row, "bf16"),
        _headroom(row, "fp8_e4m3"),
        f"{_ratio(quant.get('ratio'))} ({_ratio(quant.get('ratio_outlier_tokens_kept'))})" if quant else "-",
    ]


@result_kind(KIND, ATLAS_JSON, view=lambda data, result=None: atlas_charts(data))
@dataclass
class AtlasResult:
    """One row per model, in the order given."""

    rows: list[dict]
    config: AtlasConfig
    runs: list[ModelRun] = field(default_factory=list)  # each model's analyses, written into its own folder

    @property
    def analysed(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") == "ok"]

    def check_analysed(self) -> None:
        """Refuse, in one line, a result in which no model could be analysed (nothing worth writing)."""
        if not self.analysed:
            reasons = "; ".join(f"{r['model']}: {r.get('reason', '?')}" for r in self.rows)
            raise MassactError(f"no model could be analysed ({reasons}); check the model paths or names")

    def to_json(self) -> dict:
        from massact.models.memory import peak_resident_memory

        execution = {**self.config.execution(), "peak_memory_bytes": peak_resident_memory()}  # each row: its own
        return {
            "kind": KIND,
            "format": FORMAT,
            "config": self.config.to_json(),
            "models": self.rows,
            "execution": execution,
        }

    def table(self, width: int = 200) -> Table:
        """The terminal view in `width` characters: whole numbers, cells wrapped at spaces (atlas.md has all columns).

        Columns that cannot fit are left out (see `left_out`), never cut.
        """
        keep, widths = self.layout(width)
        table = Table(title="massact atlas", title_justify="left")
        for name, size in zip(keep, widths):
            left = name in ("model", "architecture")
            overflow = "fold" if name == "model" else "ellipsis"  # a long model name folds; numbers always fit
            table.add_column(SHORT.get(name, name), width=size, overflow=overflow, justify="left" if left else "right")
        for row in self._terminal_rows():
            table.add_row(*(row[name] for name in keep), style=None if row["ok"] else "red")
        return table

    def _terminal_rows(self) -> list[dict]:
        """Each row's terminal cells by column name (`ok`: whether the model was analysed)."""
        rows = []
        for row in self.rows:
            if row.get("status") == "ok":
                text = dict(zip(COLUMNS, cells(row)))
            else:
                text = {name: "-" for name in TERMINAL_COLUMNS} | {"model": row["model"], "architecture": "failed"}
            rows.append({name: text[name] for name in TERMINAL_COLUMNS} | {"ok": row.get("status") == "ok"})
        return rows

    def layout(self, width: int) -> tuple[list[str], list[int]]:
        """The terminal columns that fit in `width` characters and each one's text width.

        A column is never narrower than its longest word, so no number is cut; columns that cannot fit are
        left out in DROP_ORDER, the model column never.
        """
        rows = self._terminal_rows()
        shortest, longest = {}, {}
        for name in TERMINAL_COLUMNS:
            texts = [SHORT.get(name, name)] + [row[name] for row in rows]
            shortest[name] = max(cell_len(word) for text in texts for word in text.split())
            longest[name] = max(cell_len(text) for text in texts)
        shortest["model"] = min(shortest["model"], MODEL_MIN_WIDTH)

        def frame(columns: list[str]) -> int:  # one space each side of every cell, a border between and around
            return 3 * len(columns) + 1

        keep = list(TERMINAL_COLUMNS)
        for name in DROP_ORDER:
            if sum(shortest[c] for c in keep) + frame(keep) <= width:
                break
            keep.remove(name)
        spare = width - sum(shortest[c] for c in keep) - frame(keep)
        sizes = dict(shortest)
        for name in sorted(keep, key=lambda c: longest[c] - shortest[c]):  # widen the nearly whole columns first
            grow = max(0, min(longest[name] - shortest[name], spare))
            sizes[name] += grow
            spare -= grow
        return keep, [sizes[name] for name in keep]

    def left_out(self, width: int) -> list[str]:
        """The terminal columns that do not fit in `width` characters."""
        keep, _ = self.layout(width)
        return [name for name in TERMINAL_COLUMNS if name not in keep]

    def show(self, console: Console) -> None:
        """The table (in a terminal, at its width; under a pipe, every column at full width), then the notes."""
        width = console.width if console.is_terminal else PIPED_WIDTH
        print_table(console, self.table(width))
        dropped = self.left_out(width)
        if dropped:
            note = f"left out to fit {width} columns: {', '.join(dropped)} (atlas.md and --json have every column)"
            console.print(note, highlight=False, markup=False, soft_wrap=True)
        for row in self.rows:
            if row.get("status") != "ok":
                console.print(f"{row['model']}: failed: {row.get('reason')}", highlight=False, markup=False)
            for name, reason in (row.get("reasons") or {}).items():
                console.print(f"{row['model']}: {name} is null ({reason})", highlight=False, markup=False)
        for text in self.rewrite_lines():
            console.print(text, highlight=False, markup=False, soft_wrap=True)

    def rewrite_lines(self) -> list[str]:
        """Per analysed model, the `massact rewrite` commands to try (rescale for float16, rotate or smooth for a
        costly W8A8), each one the rewrite accepts for that model (`row["rewrites"]`), each with its own --out."""
        from massact.residual.suggest import HEADROOM, for_headroom, for_int8, line

        flags = "--trust-remote-code" if self.config.trust_remote_code else ""
        lines = []
        for row in self.analysed:
            model, refused = row["model"], row.get("rewrites")
            if refused is None:  # a row cached by a massact that did not record it
                lines.append(f"{model}: No rewrite suggested: the row does not say which rewrites the model accepts.")
                continue
            fp16 = (row.get("headroom") or {}).get("fp16") or {}
            peak, overflows = fp16.get("peak_over_max"), fp16.get("first_overflow_block") is not None
            found = [for_headroom(model, peak, overflows, refused, flags)]
            why = []
            if refused.get("rescale") and (overflows or (peak is not None and peak > HEADROOM)):
                why.append(f"float16 needs headroom, but {refused['rescale']}")
            ratio = (row.get("w8a8") or {}).get("ratio")
            if isinstance(ratio, (int, float)) and ratio > W8A8_COSTLY:
                suggestion, refusal = for_int8(model, refused, flags)
                found.append(suggestion)
                why += [refusal] if refusal else []
            none = "; ".join(why) or "float16 has room and simulated W8A8 costs little"
            lines.append(f"{model}: " + line([c for c in found if c], none))
        return lines

    def markdown(self) -> str:
        cfg = self.config
        lines = [
            "# massact atlas",
            "",
            f"{len(self.analysed)} of {len(self.rows)} models analysed. "
            f"Prompt {md_code(cfg.prompt, table=False)}; constancy over {cfg.samples} windows of {cfg.seq_len} "
            f"tokens of {md_code(cfg.corpus, table=False)}; criterion |x| > "
            f"{cfg.thresholds.abs:g} and >= {cfg.thresholds.ratio:g} x block median.",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "|".join("---" for _ in COLUMNS) + "|",
        ]
        lines += ["| " + " | ".join(md_escape(c) for c in cells(row)) + " |" for row in self.rows]
        reasons = [(r["model"], n, why) for r in self.rows for n, why in (r.get("reasons") or {}).items()]
        if reasons:
            lines += ["", "Fields left null:", ""] + [
                f"- {md_escape(m)}: `{n}` ({md_escape(why)})" for m, n, why in reasons
            ]
        lines += [
            "",
            "Peak / max: the largest |x| of any block output as a multiple of the format's largest finite value "
            "(fp16 65,504; bf16 3.39e38; fp8 E4M3 448); above 1x the format overflows, first at the block named. "
            "Corpus cv: std / mean of the largest site over the windows it appears in (n/a when in fewer than 2). "
            "Super weights: the weight entry that writes the largest share of each site's jump. "
            "Each model's own runs (scan, corpus, trace, attention, quant) are in its folder.",
            "",
            f"![peak ratio per block, all models]({COMPARISON_PNG})",
            "",
            "## Rewrites to try",
            "",
            *[f"- {text}" for text in self.rewrite_lines()],
        ]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> None:
        """atlas.json, atlas.md and comparison.png into `out`, and a folder per analysed model."""
        for run in self.runs:
            if run.ok:
                run.write(out / run.slug, self.config)
        write_json(out / ATLAS_JSON, self.to_json())
        (out / ATLAS_MD).write_text(self.markdown(), encoding="utf-8")
        curves = {}
        for row in self.analysed:
            ratios = row.get("block_peak_ratio") or []
            if ratios:
                depth = [i / max(len(ratios) - 1, 1) for i in range(len(ratios))]
                curves[row["model"]] = (depth, [r if isinstance(r, (int, float)) else float("nan") for r in ratios])
        plot_curves(
            curves, out / COMPARISON_PNG, "peak |x| / median per block", "depth (block / last block)", "top-1 / median"
        )
