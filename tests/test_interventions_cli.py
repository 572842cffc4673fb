"""`massact intervene` from the command line: the table and JSON, and one-line errors with status 2."""

from __future__ import annotations

import json

import pytest
from cli_runner import run

TEXT = "The king is dead. Long live the king!\nWhat news from the north, my lord?\n" * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "plays.txt"
    path.write_text(TEXT)
    return path


def test_table_and_json_on_a_tiny_model(tmp_path, capsys, monkeypatch, tiny_model_dir, corpus):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "out"
    argv = ["intervene", str(tiny_model_dir), "--corpus", f"{corpus}", "--samples", "3", "--seq-len", "16"]
    argv += ["--block", "0-", "--dims", "3", "--tokens", "0,2", "--means-samples", "2", "--out", str(out)]
    code, stdout, _ = run(argv, capsys)
    assert code in (0, None)
    data = json.loads((out / "intervene.json").read_text())
    assert [r["mode"] for r in data["rows"]] == ["original", "zero", "mean", "random"]
    assert all(r["corpus"] == str(corpus) and r["tokens"] == 3 * 15 for r in data["rows"])
    assert data["blocks"] == [0, 1]
    zero = data["rows"][1]
    assert zero["sites"] == 3 * 2 * 2 and zero["sites_by_block"] == {"0": 6, "1": 6}  # 2 tokens x 1 dim x 3 windows
    assert zero["perplexity"] != data["rows"][0]["perplexity"]
    means = json.loads((out / "means.json").read_text())
    assert {(s["block"], s["dim"]) for s in means["sites"]} == {(0, 3), (1, 3)}
    assert "zero" in stdout and "random" in stdout and (out / "report.md").exists()


def _means_file(tmp_path, hidden_size, num_blocks, dim=3):
    path = tmp_path / f"means-{hidden_size}-{num_blocks}-{dim}.json"
    site = {"block": 0, "dim": dim, "token_kind": "first", "mean": 5.0, "std": 0.0, "count": 4}
    path.write_text(json.dumps({"model": "x", "hidden_size": hidden_size, "num_blocks": num_blocks, "sites": [site]}))
    return str(path)


@pytest.mark.parametrize(
    "case", ["block out of range", "bad block", "unknown mode", "means hidden size", "means dims", "means blocks"]
)
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch, tiny_model_dir, corpus):
    monkeypatch.setenv("COLUMNS", "200")
    base = ["intervene", str(tiny_model_dir), "--corpus", str(corpus), "--samples", "2", "--seq-len", "16"]
    argv, message = {
        "block out of range": (["--block", "5"], "out of range"),
        "bad block": (["--block", "x-"], "give a block index"),
        "unknown mode": (["--modes", "original,zeroes"], "unknown mode zeroes"),
        "means hidden size": (["--block", "0", "--means", _means_file(tmp_path, 576, 2)], "hidden size 576"),
        "means dims": (["--block", "0", "--means", _means_file(tmp_path, 32, 2, dim=507)], "outside this model"),
        "means blocks": (["--block", "0", "--means", _means_file(tmp_path, 32, 30)], "for 30 blocks"),
    }[case]
    out = tmp_path / "out"
    code, _, stderr = run([*base, *argv, "--out", str(out)], capsys)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()
