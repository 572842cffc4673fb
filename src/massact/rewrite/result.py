"""The result of `massact.rewrite.run`: the saved model folder, rewrite.json, report.md."""

from __future__ import annotations

import math
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from massact.format import fmt_activation, fmt_ppl, md_code, md_escape
from massact.html.registry import result_kind
from massact.outputs import write_json
from massact.quant.result import OnWindows
from massact.report.tables import print_table
from massact.rewrite.config import FP8_E4M3_MAX, FP16_MAX

KIND = "rewrite"  # the `kind` field of the JSON: which result this is

FORMAT = "massact-rewrite/1"


def _over(values: list[float], limit: float) -> int:
    return sum(1 for v in values if v > limit)


@result_kind(KIND, "rewrite.json")
@dataclass
class RewriteResult(OnWindows):
    """What was rewritten, and the checks before and after, with the rewritten model's files."""

    steps: list[dict]
    logits: dict
    before: dict
    after: dict
    quant: dict | None
    folder: tempfile.TemporaryDirectory
    execution: dict | None = None  # how the run executed: `LoadedModel.execution`
    argument: str | None = None  # the model as the command was given it (for the commands the report prints)
    out: str | None = None  # the folder the command saves the model in (DIR in the report when not known)

    @property
    def model_files(self) -> list[str]:
        return sorted(p.name for p in Path(self.folder.name).iterdir() if p.is_file())

    def blocks(self) -> list[dict]:
        return [
            {
                "block": i,
                "peak_before": self.before["block_peak"][i],
                "peak_after": self.after["block_peak"][i],
                "token_rms_before": self.before["block_token_rms"][i],
                "token_rms_after": self.after["block_token_rms"][i],
            }
            for i in range(len(self.before["block_peak"]))
        ]

    def _summary(self, side: dict) -> dict:
        keys = ("perplexity_float32", "perplexity_float16", "nonfinite_tokens_float16")
        keys += ("nonfinite_modules_float16", "first_nonfinite_float16")
        peaks = side["block_peak"]
        return {k: side[k] for k in keys} | {
            "peak": max(peaks),
            "blocks_over_float16": _over(peaks, FP16_MAX),
            "blocks_over_fp8_e4m3": _over(peaks, FP8_E4M3_MAX),
        }

    def to_json(self) -> dict:
        return {
            "kind": KIND,
            "format": FORMAT,
            "model": self.model,
            **self.window_fields(),
            "rewrites": self.steps,
            "limits": {"float16": FP16_MAX, "fp8_e4m3": FP8_E4M3_MAX},
            "logits_float32": self.logits,
            "before": self._summary(self.before),
            "after": self._summary(self.after),
            "blocks": self.blocks(),
            "check_quant": self.quant,
            "model_files": self.model_files,
            "execution": self.execution,
        }

    def _rows(self) -> list[tuple[str, str, str]]:
        b, a = self._summary(self.before), self._summary(self.after)
        rows = [
            ("perplexity, float32", fmt_ppl(b["perplexity_float32"]), fmt_ppl(a["perplexity_float32"])),
            ("perplexity, float16", fmt_ppl(b["perplexity_float16"]), fmt_ppl(a["perplexity_float16"])),
            (
                "modules with inf/NaN output, float16",
                str(b["nonfinite_modules_float16"]),
                str(a["nonfinite_modules_float16"]),
            ),
            ("first of them", b["first_nonfinite_float16"] or "-", a["first_nonfinite_float16"] or "-"),
            ("largest |h| of any block output", fmt_activation(b["peak"]), fmt_activation(a["peak"])),
            ("blocks over the float16 maximum (65,504)", str(b["blocks_over_float16"]), str(a["blocks_over_float16"])),
            ("blocks over the fp8 E4M3 maximum (448)", str(b["blocks_over_fp8_e4m3"]), str(a["blocks_over_fp8_e4m3"])),
        ]
        for row in (self.quant or {}).get("rows", []):
            rows.append((f"{row['what']}", fmt_ppl(row["original"]), fmt_ppl(row["rewritten"])))
        return rows

    def _done(self) -> str:
        parts = []
        for step in self.steps:
            if step["kind"] == "rescale":
                how = "auto" if step["auto"] else "given"
                parts.append(f"rescale x{step['factor']:g} ({how})")
            elif step["kind"] == "smooth":
                parts.append(f"smooth alpha {step['alpha']:g}")
            else:
                parts.append(f"rotate ({step['matrix']}, seed {step['seed']})")
        return ", ".join(parts)

    def show(self, console: Console) -> None:
        table = Table(title=f"{self.model}: {self._done()}")
        table.add_column("measured on held-out windows")
        table.add_column("original", justify="right")
        table.add_column("rewritten", justify="right")
        for row in self._rows():
            table.add_row(*row)
        print_table(console, table)
        console.print(
            f"float32 logits: largest change {self.logits['max_abs_diff']:.3g} "
            f"({self.logits['max_rel_diff']:.2e} of the largest logit)",
            highlight=False,
        )
        for line in self._notes():
            console.print(line, highlight=False)
        for line in [*self.how_to_load(), *self.quant_lines()]:
            console.print(line[:1].upper() + line[1:], highlight=False, markup=False, soft_wrap=True)

    def _notes(self) -> list[str]:
        notes = []
        for step in self.steps:
            if step["kind"] == "rescale" and step["auto"]:
                notes.append(
                    f"auto factor {step['factor']:g}: the largest output on the calibration windows was "
                    f"{fmt_activation(step['calibration_peak'])} ({step['calibration_peak_module']}); target at most "
                    f"{step['headroom']:g} x 65,504"
                )
            if step["kind"] == "rotate":
                notes.append(
                    "the rotation spreads a massive channel over all channels; the token itself stays as large "
                    "(its RMS is unchanged), so per-tensor activation scales still see it"
                )
        notes += (self.quant or {}).get("notes", [])
        return notes

    def load_dtype(self) -> str:
        """The dtype to load the saved model in: float16 where the float16 check found no inf/NaN, else float32."""
        after = self._summary(self.after)
        clean = after["nonfinite_modules_float16"] == 0 and after["nonfinite_tokens_float16"] == 0
        return "float16" if clean and math.isfinite(after["perplexity_float16"]) else "float32"

    def how_to_load(self) -> list[str]:
        """How to load the saved model: the dtype, with one line of transformers and the massact command."""
        folder, dtype = self.out or "DIR", self.load_dtype()
        if dtype == "float16":
            why = "float16 (its float16 check found no inf/NaN; float32 gives the original's logits)"
        else:
            bad = self._summary(self.after)["nonfinite_modules_float16"]
            why = f"float32 (float16 still gives inf/NaN in {bad} modules; bfloat16 holds the range)"
        return [
            f"load it in {why}: `AutoModelForCausalLM.from_pretrained({folder!r}, dtype=torch.{dtype})`, "
            f"or `massact scan {shlex.quote(folder)} --dtype {dtype}`"
        ]

    def quant_lines(self) -> list[str]:
        """How to reproduce the int8 numbers and, where rescaling did not help int8, that smoothing may."""
        if not self.quant:
            return []
        folder = self.out or "DIR"
        windows = (
            f"--corpus {shlex.quote(self.corpus)} --samples {self.windows[0]} --seq-len {self.windows[1]} "
            f"--calib-samples {self.calibration_windows[0]} --seed {self.seed} --batch-size {self.quant['batch_size']}"
        )
        lines = [
            f"the int8 numbers are {self.quant['library']}'s W8A8 (int8 weights per output channel, int8 inputs "
            f"with one static scale per tensor calibrated on the {self.calibration_windows[0]} calibration windows, "
            f"LM head kept) perplexity on the {self.windows[0]} held-out windows; to measure the saved model again, "
            f"`massact rewrite {shlex.quote(folder)} --rescale 1 --check-quant w8a8 {windows} "
            f"--out {shlex.quote(folder.rstrip('/') + '-check')}` (a factor of 1 changes nothing: its original "
            "column is this run's rewritten column)"
        ]
        kinds = {step["kind"] for step in self.steps}
        w8a8 = self.quant["schemes"].get("W8A8") or {}
        if "rescale" in kinds and "smooth" not in kinds and not w8a8.get("rewrite_helps", True):
            from massact.residual.suggest import SMOOTH_ALPHA, command

            how = (
                f"`{command(self.argument, f'--smooth {SMOOTH_ALPHA:g} --check-quant w8a8')}`" if self.argument else ""
            )
            lines.append(
                "rescaling does not help int8 (its scales move with the factor, so the int8 codes barely change); "
                f"--smooth {SMOOTH_ALPHA:g} (SmoothQuant folded into the weights) may: {how or 'add it to the command'}"
            )
        return lines

    def markdown(self) -> str:
        lines = [
            f"# Rewrite of {md_escape(self.model)}: {md_escape(self._done())}",
            "",
            f"Checked on {self.windows[0]} held-out windows of {self.windows[1]} tokens of {md_code(self.corpus)} "
            f"(seed {self.seed}); factors and scales from {self.calibration_windows[0]} further windows. "
            f"Window prefix: {', '.join(md_code(t) for t in self.prefix_tokens) or 'none'}.",
            "",
            "## What was changed",
            "",
        ]
        for step in self.steps:
            lines += [f"- **{step['kind']}**: " + "; ".join(md_escape(c) for c in step["changed"])]
        lines += [
            "",
            f"The folder is a standard transformers model ({', '.join(md_code(f) for f in self.model_files)}) "
            "that loads with no massact code; " + self.how_to_load()[0] + ".",
            "",
            "## Measured before and after",
            "",
            f"Float32 logits: largest change {self.logits['max_abs_diff']:.3g}, "
            f"{self.logits['max_rel_diff']:.2e} of the largest logit ({self.logits['max_abs']:.3g}).",
            "",
            "| | original | rewritten |",
            "|---|---:|---:|",
        ]
        lines += [f"| {md_escape(a)} | {md_escape(b)} | {md_escape(c)} |" for a, b, c in self._rows()]
        lines += [""] + [f"{md_escape(n[:1].upper() + n[1:])}." for n in self._notes()]
        lines += [f"{n[:1].upper() + n[1:]}." for n in self.quant_lines()] + ["", "## Per block", ""]
        lines += [
            "| block | peak \\|h\\| before | after | largest token RMS before | after |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in self.blocks():
            cells = [
                fmt_activation(row[k]) for k in ("peak_before", "peak_after", "token_rms_before", "token_rms_after")
            ]
            lines.append(f"| {row['block']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> None:
        out = Path(out)
        for name in self.model_files:
            shutil.copy2(Path(self.folder.name) / name, out / name)
        write_json(out / "rewrite.json", self.to_json())
        (out / "report.md").write_text(self.markdown(), encoding="utf-8")
