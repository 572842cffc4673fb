"""`massact scan` from the command line: outputs, JSON on stdout, and one-line errors with status 2."""

from __future__ import annotations

import json

import pytest
from cli_runner import run

from massact.outputs import MARKER, read_marker, staged_output


@pytest.mark.slow
def test_scan_default_writes_json_report_and_figures(tmp_path, capsys, smollm2):
    out = tmp_path / "scan"
    code, stdout, _ = run(["scan", "--out", str(out), "--json"], capsys)
    assert code in (0, None)
    data = json.loads(stdout)
    assert data == json.loads((out / "scan.json").read_text())
    assert data["num_blocks"] == 30 and data["hidden_size"] == 576
    assert data["summary"]["dims"][0] == 507 and data["summary"]["first_block"] == 11
    files = ["activations_3d.png", "layerwise.png", "report.html", "report.md", "scan.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, *files])
    assert read_marker(out) == {"command": "massact scan", "files": files}
    report = (out / "report.md").read_text()
    assert "![" in report and "layerwise.png" in report and "activations_3d.png" in report
    for png in ("layerwise.png", "activations_3d.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bad_inputs(tmp_path, tiny_model_dir):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 64)
    tiny = str(tiny_model_dir)
    return {
        "missing path": ([str(tmp_path / "nope")], "no such file"),
        "no model in directory": ([str(empty_dir)], "no config.json"),
        "corrupt gguf": ([str(junk)], "not a readable GGUF"),
        "empty prompt": ([tiny, "--prompt", "  "], "prompt is empty"),
        "prompt too long": ([tiny, "--prompt", "word " * 200], "longer than the model's context (64 tokens)"),
        "negative abs threshold": ([tiny, "--abs-threshold", "-1"], "positive"),
        "zero ratio threshold": ([tiny, "--ratio-threshold", "0"], "positive"),
        "non-numeric threshold": ([tiny, "--abs-threshold", "abc"], "--abs-threshold"),
        "out is a file": ([tiny, "--out", str(a_file)], "not a directory"),
        "out under a file": ([tiny, "--out", str(a_file / "sub")], "is a file"),
        "keep out of range": ([tiny, "--keep", "9"], "out of range"),
        "corpus and images": ([tiny, "--corpus", "shakespeare", "--images", "samples"], "not both"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "no model in directory",
        "corrupt gguf",
        "empty prompt",
        "prompt too long",
        "negative abs threshold",
        "zero ratio threshold",
        "non-numeric threshold",
        "out is a file",
        "out under a file",
        "keep out of range",
        "corpus and images",
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(case, tmp_path, capsys, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("MASSACT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")  # usage errors are wrapped to the terminal width
    argv, message = _bad_inputs(tmp_path, tiny_model_dir)[case]
    out = tmp_path / "out"
    if "--out" not in argv:
        argv = [*argv, "--out", str(out)]
    code, stdout, stderr = run(["scan", *argv], capsys)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("massact: error: ")
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_staged_output_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "result"
    with pytest.raises(RuntimeError), staged_output(out) as staging:
        (staging / "scan.json").write_text("{}")
        raise RuntimeError("figure failed")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_output(out) as staging:
        (staging / "scan.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "scan.json"] and len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow  # a corpus scan, then a scan over its folder
def test_a_scan_over_a_corpus_run_folder_replaces_that_run_whole(tmp_path, capsys, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MASSACT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    text = tmp_path / "text.txt"
    text.write_text("Summer is warm. Winter is cold. " * 40, encoding="utf-8")
    corpus = ["scan", str(tiny_model_dir), "--corpus", str(text), "--samples", "2", "--seq-len", "16"]
    code, _, _ = run([*corpus, "--out", str(out)], capsys)
    assert code in (0, None)
    corpus_files = set(read_marker(out)["files"])
    assert corpus_files and "scan.json" not in corpus_files
    (out / "my_notes.txt").write_text("kept")
    code, stdout, stderr = run(["scan", str(tiny_model_dir), "--out", str(out)], capsys)
    assert code in (0, None)
    marker = read_marker(out)
    assert marker["command"] == "massact scan" and "scan.json" in marker["files"]
    left = {p.name for p in out.iterdir()}
    assert left == {*marker["files"], MARKER, "my_notes.txt"}
    assert not (corpus_files - set(marker["files"])) & left  # nothing of the corpus run is left
    assert f"wrote {out}/" in stderr and MARKER not in stderr
    assert "…" not in stdout  # under a pipe the tables are printed wide enough for every number
    for path in out.iterdir():
        assert path.stat().st_mode & 0o644 == 0o644
