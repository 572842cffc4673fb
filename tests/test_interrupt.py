"""Ctrl-C: one line that says the run was interrupted and what was (not) written, exit status 130."""

from __future__ import annotations

import importlib

import pytest
from cli_runner import run
from planting import plant_massive, tiny_model, word_tokenizer

from massact.atlas.model_run import ModelRun
from massact.outputs import MARKER
from massact.scan.result import ScanResult

FAMILIES = {
    "gemma": True,
    "gpt2": False,
}  # family -> its tokenizer adds a BOS (saved Qwen2 folders load Qwen2Tokenizer)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A planted Gemma whose tokenizer adds a BOS and a planted GPT-2 without one, saved to folders."""
    folders = {}
    for family, bos in FAMILIES.items():
        folder = tmp_path_factory.mktemp(family)
        model = tiny_model(family)
        plant_massive(model, block=1, dim=5)
        model.save_pretrained(folder)
        word_tokenizer(lambda i: f"w{i}", bos=bos).save_pretrained(folder)
        folders[family] = folder
    return folders


def _interrupt_while_writing(monkeypatch) -> None:
    """Make a scan's `write` put a file in its folder, then meet Ctrl-C."""

    def write(self, folder):
        (folder / "scan.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(ScanResult, "write", write)


@pytest.mark.parametrize("family", FAMILIES)
def test_ctrl_c_while_writing_leaves_no_folder_and_says_so(family, saved, tmp_path, capsys, monkeypatch):
    _interrupt_while_writing(monkeypatch)
    out = tmp_path / "out"
    code, stdout, stderr = run(["scan", str(saved[family]), "--prompt", "w5 w6 w7", "--out", str(out)], capsys)
    assert code == 130
    assert [line for line in stderr.splitlines() if line.strip()][-1] == "massact: interrupted; nothing was written"
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no out folder, no staging folder left beside it


@pytest.mark.slow  # a whole scan, then the same scan interrupted
@pytest.mark.parametrize("family", FAMILIES)
def test_ctrl_c_keeps_the_earlier_run_in_the_folder(family, saved, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["scan", str(saved[family]), "--prompt", "w5 w6 w7", "--out", str(out)]
    assert run(argv, capsys)[0] in (0, None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "scan.json" in before and MARKER in before
    _interrupt_while_writing(monkeypatch)
    code, _, stderr = run(argv, capsys)
    assert code == 130 and stderr.strip().endswith("nothing was written")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ctrl_c_in_atlas_names_the_models_it_keeps(tmp_path, capsys, monkeypatch):
    def analyse(model, slug, config, label):
        if model == "second":
            raise KeyboardInterrupt
        return ModelRun(slug, {"model": model, "status": "ok", "folder": slug, "reasons": {}})

    monkeypatch.setattr(importlib.import_module("massact.atlas.run"), "analyse", analyse)
    out = tmp_path / "atlas"
    code, _, stderr = run(["atlas", "first", "second", "--out", str(out)], capsys)
    assert code == 130
    line = [line for line in stderr.splitlines() if line.strip()][-1]
    assert line == f"massact: interrupted; 1 of 2 model(s) finished; {out}/ keeps them and the same command reuses them"
    assert (out / "first").is_dir() and not (out / "second").exists()
