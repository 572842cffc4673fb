"""The documentation site: docs/python.md runs as written and prints what it shows, every config field has a
doc, and `mkdocs build --strict` builds the site with every public name of every analysis package on its page.

Without mkdocs (the `docs` extra) the build checks skip, except in CI (`CI` or `MASSACT_REQUIRE_DOCS` set),
where they fail: a renamed function must break the build there, not the page.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python.md"
REQUIRED = bool(os.environ.get("CI") or os.environ.get("MASSACT_REQUIRE_DOCS"))
ANALYSES = (
    "scan",
    "corpus",
    "interventions",
    "attention",
    "trace",
    "quant",
    "export",
    "rewrite",
    "stream",
    "atlas",
    "train",
    "vision",
)
CONFIGS = (  # every analysis's config, and the dataclasses they and the entry points take
    "massact.scan.ScanConfig",
    "massact.corpus.CorpusConfig",
    "massact.corpus.CorpusInputs",
    "massact.interventions.InterventionConfig",
    "massact.interventions.SiteSpec",
    "massact.attention.AttentionConfig",
    "massact.trace.TraceConfig",
    "massact.trace.TraceInputs",
    "massact.quant.QuantConfig",
    "massact.quant.QuantInputs",
    "massact.export.ExportConfig",
    "massact.rewrite.RewriteConfig",
    "massact.stream.StreamConfig",
    "massact.atlas.AtlasConfig",
    "massact.train.config.TrainConfig",
    "massact.train.config.ModelConfig",
    "massact.train.experiment.ExperimentConfig",
    "massact.vision.ImageScanConfig",
    "massact.vision.FixRegMeanConfig",
    "massact.detect.Thresholds",
    "massact.tasks.TaskConfig",
)


def cells(text: str) -> list[tuple[str, str | None]]:
    """Each ```python block of `text`, with the ```text block right after it (what it prints), or None."""
    blocks = re.finditer(r"^```(\w*)\n(.*?)^```[ \t]*$", text, re.S | re.M)
    found: list[tuple[str, str | None]] = []
    last_end = None
    for block in blocks:
        kind, body = block.group(1), block.group(2)
        between = text[last_end : block.start()] if last_end is not None else None
        if kind == "python":
            found.append((body, None))
        elif kind == "text" and found and found[-1][1] is None and between is not None and not between.strip():
            found[-1] = (found[-1][0], body)
        last_end = block.end() if kind == "python" else None
    return found


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def check_printed(printed: str, shown: str) -> None:
    """`printed` is what the page shows: the same words, and numbers within 2% (BLAS sums in any order)."""
    assert NUMBER.split(printed.strip()) == NUMBER.split(shown.strip()), f"printed:\n{printed}\npage shows:\n{shown}"
    for got, want in zip(NUMBER.findall(printed), NUMBER.findall(shown), strict=True):
        assert math.isclose(float(got), float(want), rel_tol=0.02, abs_tol=0.01), f"{got} vs {want}\n{printed}"


def test_cells_pair_code_with_output() -> None:
    text = "x\n```python\na = 1\n```\n\n```text\n1\n```\nprose\n```text\nnot output\n```\n```python\nb\n```\n"
    assert cells(text) == [("a = 1\n", "1\n"), ("b\n", None)]


RUNNER = r"""
import contextlib, io, json, sys
import torch

cells = json.loads(open(sys.argv[1]).read())
ns = {"__name__": "__main__"}
printed = []
for code in cells:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(code, "docs/python.md", "exec"), ns)
    printed.append(buffer.getvalue())

scan, effects, report, facts = ns["scan"], ns["effects"].to_json(), ns["report"], ns["facts"]
ids = ns["tokenizer"](ns["prompt"], return_tensors="pt")["input_ids"]
with torch.no_grad():  # the saved folder, loaded by transformers alone, against the model the page started with
    original = ns["model"](ids).logits
    reloaded = ns["reloaded"](ids).logits
out = ns["out"]
result = {
    "printed": printed,
    "planted": [ns["BLOCK"], ns["DIM"]],
    "dims": scan.summary["dims"],
    "first_block": scan.summary["first_block"],
    "site_tokens": [t["token"] for t in scan.summary["tokens"]],
    "scan_files": sorted(p.name for p in (out / "scan").iterdir()),
    "figure_bytes": (out / "top1_vs_median.png").read_bytes()[:8].hex(),
    "rows": effects["rows"],
    "quant_rows": report["rows"],
    "baseline": report["baseline"]["perplexity"],
    "first_position_rate": report["outlier_tokens"]["first_position_rate"],
    "massive_blocks": report["massive_blocks"],
    "rewrite": facts,
    "rotated_files": sorted(p.name for p in (out / "rotated").iterdir()),
    "reloaded_diff": float((original - reloaded).abs().max()),
    "logit_scale": float(original.abs().max()),
}
with open(sys.argv[2], "w") as handle:
    json.dump(result, handle)
"""


def test_python_page_runs_and_prints_what_it_shows(tmp_path: Path) -> None:
    """The page's cells, in order and in one namespace, in a fresh interpreter whose working folder is tmp_path."""
    page = cells(PAGE.read_text(encoding="utf-8"))
    assert len(page) >= 6  # model, scan, plot, intervene, quantize, rewrite
    (tmp_path / "cells.json").write_text(json.dumps([code for code, _ in page]))
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, "cells.json", "result.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())

    for (_, shown), printed in zip(page, result["printed"], strict=True):
        if shown is not None:
            check_printed(printed, shown)

    block, dim = result["planted"]
    assert result["dims"] == [dim] and result["first_block"] == block and result["site_tokens"] == [0]
    assert {"scan.json", "report.md", "layerwise.png"} <= set(result["scan_files"])
    assert result["figure_bytes"] == "89504e470d0a1a0a"  # a PNG

    rows = {row["mode"]: row for row in result["rows"]}
    assert rows["mean"]["perplexity"] == pytest.approx(rows["original"]["perplexity"], rel=1e-9)  # a fixed bias
    assert rows["zero"]["perplexity"] != pytest.approx(rows["original"]["perplexity"], rel=1e-4)
    assert rows["zero"]["block"] == block and rows["zero"]["sites_per_window"] == 1.0  # one site, <s>'s dim

    assert [row["strategy"] for row in result["quant_rows"]] == ["none", "outlier-tokens"]
    assert all(math.isfinite(row["perplexity"]) for row in result["quant_rows"])
    assert result["first_position_rate"] == 1.0 and result["massive_blocks"] == list(range(block, 4))

    rewrite = result["rewrite"]
    assert rewrite["logits_float32"]["max_rel_diff"] < 1e-5
    assert rewrite["after"]["peak"] < rewrite["before"]["peak"] / 4
    assert {"config.json", "model.safetensors", "tokenizer.json", "rewrite.json"} <= set(result["rotated_files"])
    assert result["reloaded_diff"] < 1e-4 * result["logit_scale"]


def require(module: str) -> None:
    """Skip without `module` (the `docs` extra), or fail in CI."""
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed: `make docs` (or pip install -e '.[docs]') installs the docs extra"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)


def test_every_config_field_has_a_doc() -> None:
    """Each field of each config shows a doc in the reference: its own docstring or its trailing comment."""
    require("griffe")
    import griffe

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        extensions = importlib.import_module("griffe_extensions")
    finally:
        sys.path.remove(str(ROOT / "docs"))
    loader = griffe.GriffeLoader(
        search_paths=[str(ROOT / "src")],
        extensions=griffe.load_extensions(extensions.FieldComments, extensions.ImportedOverSubmodule),
    )
    loader.load("massact")
    loader.resolve_aliases(implicit=False, external=None)
    bare = []
    for path in CONFIGS:
        module, name = path.rsplit(".", 1)
        fields = [f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))]
        documented = loader.modules_collection[path]
        assert fields
        bare += [f"{path}.{f}" for f in fields if f not in documented.members or not documented.members[f].docstring]
    assert not bare, f"fields without a doc (add a trailing comment): {bare}"


def test_site_builds_strict_with_every_public_name(tmp_path: Path) -> None:
    require("mkdocs")
    require("mkdocstrings")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for package in ANALYSES:
        page = (site / "api" / package / "index.html").read_text(encoding="utf-8")
        names = importlib.import_module(f"massact.{package}").__all__
        missing = [name for name in names if f'id="massact.{package}.{name}"' not in page]
        assert not missing, f"api/{package}.md leaves out {missing}"
    pages = {p: (site / "api" / p / "index.html").read_text(encoding="utf-8") for p in ("models", "capture")}
    for page, name in (
        ("models", "load_model"),
        ("models", "LoadedModel"),
        ("models", "find_structure"),
        ("models", "Structure"),
        ("capture", "capture_block_stats"),
        ("capture", "HookSet"),
    ):
        assert f'id="massact.{name}"' in pages[page] or re.search(rf'id="massact\.[\w.]*\.{name}"', pages[page])
    python = (site / "python" / "index.html").read_text(encoding="utf-8")
    assert "massact.scan(loaded, prompt)" in python.replace("&quot;", '"')
    assert (site / "api" / "scan" / "index.html").read_text().count("massact.scan.ScanConfig.") >= 6  # its fields
