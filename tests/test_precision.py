"""Runs whose dtype cannot hold the activations: every command writes its results and says why, never a traceback.

Two planted families: a Gemma-3 model (sandwich norms, `(1 + w)` gains, a tokenizer that adds a BOS) whose
block 1 writes 1e5 into dim 4 of the BOS through its post-MLP norm, and a GPT-2 model (no BOS) whose block 1
writes far more than that into dim 4 of every MARK token. Both exceed float16's 65,504, so in float16 block 1's
output holds inf and every later block NaN.
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from cli_runner import run as run_cli
from planting import (
    FP16_MAX,
    MARK,
    VOCAB,
    letter_word,
    plant_massive,
    plant_sandwich,
    tiny_gemma3,
    tiny_model,
    word_tokenizer,
)

from massact.precision import Precision

PLANT_BLOCK = 1


word = letter_word


PROMPT = " ".join(word(i) for i in (12, 30, 40, 11, 50, MARK, 33, 21, 44))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved planted models (gemma3 with a BOS, qwen2 without) and a corpus in which MARK recurs."""
    root = tmp_path_factory.mktemp("precision")
    gemma = tiny_gemma3()
    plant_sandwich(gemma, block=PLANT_BLOCK, dim=4)
    gpt2 = tiny_model("gpt2")
    plant_massive(gpt2, block=PLANT_BLOCK, dim=4, gain=4e4)
    for name, model, bos in (("gemma3", gemma, True), ("gpt2", gpt2, False)):
        model.save_pretrained(root / name)
        word_tokenizer(word, bos=bos).save_pretrained(root / name)
    rng = random.Random(0)
    docs = [" ".join(word(MARK if k % 9 == 4 else rng.randrange(10, VOCAB)) for k in range(300)) for _ in range(6)]
    (root / "corpus.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return root


def _data(root, name: str) -> list[str]:
    corpus = str(root / "corpus.txt")
    return ["--corpus", corpus, "--samples", "2", "--seq-len", "24"] if name != "stream" else ["--text-file", corpus]


COMMANDS = {
    "scan": ["scan", "--prompt", PROMPT],
    "scan-corpus": ["scan", "--batch-size", "2"],
    "quant": ["quant", "--calib-samples", "2", "--schemes", "W8A8", "--strategies", "none,outlier-tokens,best"],
    "intervene": ["intervene", "--means-samples", "2", "--block", "1", "--modes", "original,zero", "--dims", "4"],
    "attention": ["attention", "--prompt", PROMPT],
    "trace": ["trace", "--prompt", PROMPT],
    "stream": ["stream", "--tokens", "40", "--cache", "12", "--score-from", "16"],
    "export": ["export"],
}
JSON_FILE = {
    "scan": "scan.json",
    "scan-corpus": "corpus.json",
    "quant": "quant.json",
    "intervene": "intervene.json",
    "attention": "attention.json",
    "trace": "trace.json",
    "stream": "stream.json",
}


def _argv(root, family: str, command: str, out, dtype: str) -> list[str]:
    name, *rest = COMMANDS[command]
    data = _data(root, "stream" if command == "stream" else name) if command not in ("scan", "attention") else []
    if command == "trace":
        data = ["--corpus", str(root / "corpus.txt"), "--samples", "2", "--seq-len", "24"]
    return [name, str(root / family), *rest, *data, "--dtype", dtype, "--out", str(out)]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_float16_overflow_is_written_and_explained_by_every_command(folders, command, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(_argv(folders, "gemma3", command, out, "float16"), capsys)
    assert code == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    text = re.sub(r"\s+", " ", stdout)
    assert f"float16 overflow: inf/NaN in the output of blocks 1, 2, 3 (first block {PLANT_BLOCK};" in text
    assert "--dtype bfloat16" in text and "massact rewrite --rescale auto" in text
    if command == "export":  # its files are for other tools; the JSON it prints carries the note
        argv = [a for a in _argv(folders, "gemma3", command, out, "float16") if a not in ("--out", str(out))]
        data = json.loads(run_cli([*argv, "--json"], capsys)[1])
    else:
        data = json.loads((out / JSON_FILE[command]).read_text())
    precision = data["precision"]
    assert precision["dtype"] == "float16" and precision["overflow_block"] == PLANT_BLOCK
    assert precision["nonfinite_blocks"] == [1, 2, 3] and precision["exceeds_float16"]
    if command != "export":  # export writes no report.md
        assert "**Precision.** float16 overflow" in (out / "report.md").read_text()
    for figure in out.glob("*.png"):
        assert figure.stat().st_size > 1000


@pytest.mark.parametrize("command", ["scan", "quant", "intervene"])
def test_float16_overflow_without_bos_gpt2(folders, command, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(_argv(folders, "gpt2", command, out, "float16"), capsys)
    assert code == 0, stderr[-2000:]
    precision = json.loads((out / JSON_FILE[command]).read_text())["precision"]
    assert precision["overflow_block"] == PLANT_BLOCK and precision["exceeds_float16"]
    assert "float16 overflow" in re.sub(r"\s+", " ", stdout)


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_float32_run_says_the_peak_exceeds_float16(folders, family, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(_argv(folders, family, "scan", out, "float32"), capsys)
    assert code == 0, stderr[-2000:]
    precision = json.loads((out / "scan.json").read_text())["precision"]
    assert precision["nonfinite_blocks"] == [] and precision["exceeds_float16"]
    assert precision["peak"] > FP16_MAX and precision["peak_block"] >= PLANT_BLOCK
    if family == "gemma3":  # the norm's gain 1 + w = 1e5 / sqrt(32) on a unit-RMS spike
        assert precision["peak"] == pytest.approx(1e5, rel=1e-3)
    assert "exceeds float16's largest value (65,504)" in re.sub(r"\s+", " ", stdout)
    assert "exceeds float16's largest value" in (out / "report.md").read_text()


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_float16_run_whose_blocks_overflow_exceeds_float16(folders, family, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = run_cli(_argv(folders, family, "scan", out, "float16"), capsys)
    assert code == 0, stderr[-2000:]
    data = json.loads((out / "scan.json").read_text())
    blocks = [b for b in data["blocks"] if b["nonfinite"] > 0]
    assert [b["index"] for b in blocks] == list(range(PLANT_BLOCK, len(data["blocks"])))  # inf, then NaN downstream
    precision = data["precision"]
    assert precision["nonfinite_blocks"] == [b["index"] for b in blocks]
    assert precision["peak"] is None or precision["peak"] <= FP16_MAX  # float16 holds no larger finite value
    assert precision["exceeds_float16"]


def test_intervene_says_why_when_nothing_can_be_measured(folders, tmp_path, capsys):
    argv = _argv(folders, "gemma3", "intervene", tmp_path / "out", "float16")
    argv = [a for a in argv if a not in ("--block", "1", "--dims", "4")]
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 2 and not (tmp_path / "out").exists()
    assert "float16 overflow" in stderr and "--dtype bfloat16" in stderr and "Traceback" not in stderr


def test_scan_does_not_say_massive_activations_end_where_float16_overflowed(folders, tmp_path, capsys):
    argv = _argv(folders, "gemma3", "scan", tmp_path / "out", "float16") + ["--abs-threshold", "1"]
    code, stdout, stderr = run_cli([*argv, "--ratio-threshold", "2"], capsys)
    assert code == 0, stderr
    report = (tmp_path / "out" / "report.md").read_text()
    data = json.loads((tmp_path / "out" / "scan.json").read_text())
    last = data["summary"]["last_block"]
    assert data["blocks"][last + 1]["nonfinite"] > 0
    assert f"only because block {last + 1}'s output overflowed" in report
    assert f"last until block {last}" not in report


def test_precision_note_names_the_first_bad_block_and_is_silent_when_the_dtype_fits():
    overflow = Precision.measure(torch.float16, [3.0, 5.0, None, None], [2, 3])
    assert overflow.overflow_block == 2 and overflow.peak == 5.0 and overflow.peak_block == 1
    assert "inf/NaN in the output of blocks 2, 3 (first block 2;" in overflow.warning
    fits = Precision.measure("float16", [3.0, 60000.0], [])
    assert fits.warning is None and not fits.exceeds_float16
    wide = Precision.measure("bfloat16", [3.0, 70000.0, 2.0], [])
    assert wide.exceeds_float16 and "this run is bfloat16" in wide.warning and wide.peak_block == 1
    assert wide.to_json()["warning"] == wide.warning
    assert overflow.exceeds_float16 and overflow.to_json()["exceeds_float16"]  # inf/NaN in float16: it overflowed
    broken = Precision.measure("float32", [3.0, None], [1])  # NaN in float32 says nothing of float16's range
    assert not broken.exceeds_float16 and "check the model's weights" in broken.warning
