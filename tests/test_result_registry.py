"""One result writes everything: `result.write(folder)` from Python writes the files the command writes,
report.html included, and every result class registers its kind, JSON file and view."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from cli_runner import run as run_cli
from planting import letter_word, planted_with_words

import massact
from massact.html.registry import json_names, registered

PROMPT = " ".join(letter_word(10 + i) for i in range(12))


def _result_classes() -> list[type]:
    """Every class in massact that has the result protocol: `to_json`, `show` and `write`."""
    found = {}
    for info in pkgutil.walk_packages(massact.__path__, "massact."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            protocol = getattr(cls, "_is_protocol", False)  # `commands.common.Result` describes them
            if (
                cls.__module__ == info.name
                and not protocol
                and all(callable(getattr(cls, m, None)) for m in ("to_json", "show", "write"))
            ):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return list(found.values())


def test_every_result_class_registers_its_kind():
    classes = _result_classes()
    assert len(classes) >= 15
    unregistered = [c.__qualname__ for c in classes if registered(getattr(c, "result_kind", None)) is None]
    assert unregistered == []
    kinds = {c.result_kind for c in classes}
    assert {"scan", "image-scan", "corpus", "attention", "trace", "quant", "rewrite", "atlas", "stream"} <= kinds
    assert registered("scan").view is not None and registered("trace").view is None  # trace: the generic tables
    assert {"scan.json", "corpus.json", "quant.json", "atlas.json"} <= set(json_names())


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])  # gemma3: sandwich norms and a BOS
def test_write_from_python_is_the_commands_folder(family, tmp_path, capsys):
    loaded = planted_with_words(family)
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    result = massact.scan(loaded, PROMPT, massact.scan.ScanConfig(keep_peak=True))  # as the command with --out
    result.write(tmp_path / "python")
    code, _, err = run_cli(
        ["scan", str(tmp_path / "model"), "--prompt", PROMPT, "--out", str(tmp_path / "cli")], capsys
    )
    assert code == 0, err
    python_files = sorted(p.name for p in (tmp_path / "python").iterdir())
    cli_files = sorted(p.name for p in (tmp_path / "cli").iterdir() if not p.name.startswith("."))
    assert python_files == cli_files and {"report.html", "activations_3d.png"} <= set(python_files)
    page = (tmp_path / "python" / "report.html").read_text(encoding="utf-8")
    assert 'id="scan-layerwise"' in page  # the scan's own view, not the generic tables
