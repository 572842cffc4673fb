"""One model's part of an atlas: its row and the analyses behind it, kept in memory or in a cache folder.

`ModelRun.write(folder)` lays out the model's folder: `row.json` (the row, with the settings that made
it, so a later run with the same settings reuses it) and one run folder per analysis (scan/, corpus/,
trace/, attention/, quant/), each as that analysis's own command writes it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from massact.atlas.config import AtlasConfig
from massact.html import write_report_html
from massact.outputs import atomic_write_text, staged_output, to_json_text, write_json

ROW_JSON = "row.json"
NOT_RUN = "not run (--steps)"


@dataclass
class StepOutput:
    """One analysis's result and the JSON name its run folder uses when the result writes no files itself."""

    result: object
    json_name: str

    def write(self, folder: Path) -> None:
        """The run folder of the analysis (all files or none), with its report.html."""
        with staged_output(folder) as staging:
            if hasattr(self.result, "write"):
                self.result.write(staging)  # report.html included
            else:
                write_json(staging / self.json_name, self.result.to_json())
                write_report_html(staging, self.result)


@dataclass
class CorpusOutput(StepOutput):
    """A corpus summary, written as `massact scan --corpus` writes one."""

    def write(self, folder: Path) -> None:
        from massact.corpus.report import write_corpus_outputs

        with staged_output(folder) as staging:
            write_corpus_outputs(self.result, staging)
            write_report_html(staging, None)


@dataclass
class ModelRun:
    """A model's row and where its analyses are: `outputs` in memory, or the folder `cached` holds them in."""

    slug: str  # the model's folder name
    row: dict
    outputs: dict[str, StepOutput] = field(default_factory=dict)
    cached: Path | None = None

    @property
    def ok(self) -> bool:
        return self.row.get("status") == "ok"

    def write(self, folder: Path, config: AtlasConfig) -> None:
        """The model's folder: row.json and one run folder per analysis."""
        folder = Path(folder)
        if self.cached is not None:
            if self.cached.resolve() != folder.resolve():
                shutil.copytree(self.cached, folder, dirs_exist_ok=True)
            return
        for step, output in self.outputs.items():
            output.write(folder / step)
        folder.mkdir(parents=True, exist_ok=True)
        saved = {"model": self.row["model"], "config": config.to_json(), "row": self.row}
        atomic_write_text(folder / ROW_JSON, to_json_text(saved) + "\n")


def finished(folder: Path, model: str, config: AtlasConfig) -> dict | None:
    """The saved row of a model finished by an earlier run with the same settings, else None.

    A row with a step that failed is not finished: a rerun tries that model again.
    """
    path = folder / ROW_JSON
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if saved.get("model") != model or saved.get("config") != config.to_json():
        return None
    row = saved.get("row") or {}
    failed = [why for why in (row.get("reasons") or {}).values() if not why.endswith(NOT_RUN)]
    return None if failed else row
