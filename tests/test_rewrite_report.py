"""`massact rewrite`'s report (report.md and the terminal summary) says how to load the result, how to reproduce
its int8 numbers, and that `--smooth` may help int8 where rescaling does not: each pasted and run."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
import transformers as tf
from cli_runner import run as run_cli
from planting import MARK, VOCAB, word_tokenizer
from planting import planted_for_rewrite as planted
from planting import w_word as _word


def _saved(family: str, folder, bos: bool = True):
    model = planted(family)
    model.save_pretrained(folder)
    word_tokenizer(_word, bos=bos).save_pretrained(folder)
    return model


def _corpus(path):
    words = torch.randint(10, VOCAB, (3000,), generator=torch.Generator().manual_seed(1))
    path.write_text(" ".join(_word(int(i)) for i in words if int(i) != MARK), encoding="utf-8")
    return path


def _commands(text: str) -> list[str]:
    return [part for part in text.split("`")[1::2] if part.startswith("massact ")]


def _load_line(text: str) -> str:
    return next(part for part in text.split("`")[1::2] if part.startswith("AutoModelForCausalLM.from_pretrained("))


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_report_says_how_to_load_reproduce_int8_and_try_smooth(family, tmp_path, capsys, monkeypatch):
    _saved(family, tmp_path / "model")
    corpus = _corpus(tmp_path / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    argv = ["rewrite", "model", "--rescale", "auto", "--check-quant", "w8a8", "--corpus", str(corpus)]
    code, stdout, stderr = run_cli([*argv, "--seq-len", "32", "--batch-size", "1", "--out", "out"], capsys)
    assert code == 0, stderr
    report = (tmp_path / "out" / "report.md").read_text()
    data = json.loads((tmp_path / "out" / "rewrite.json").read_text())
    summary = " ".join(stdout.split())  # the terminal wraps long lines
    # load: float16 now holds it, and the pasted line loads it in float16 with finite logits
    assert data["after"]["nonfinite_modules_float16"] == 0
    line = _load_line(report)
    assert "dtype=torch.float16" in line and line.replace(" ", "") in summary.replace(" ", "")
    loaded = eval(line, {"AutoModelForCausalLM": tf.AutoModelForCausalLM, "torch": torch})
    assert next(loaded.parameters()).dtype == torch.float16
    ids = torch.tensor([[MARK, 11, 12, 13, 14]])
    assert torch.isfinite(loaded(input_ids=ids).logits).all()
    assert "massact scan out --dtype float16" in report
    # reproduce: the printed command measures the saved model again, and its original column is our rewritten one
    again, smooth = (c for c in _commands(report) if c.startswith("massact rewrite"))
    assert again.replace(" ", "") in summary.replace(" ", "") and "--rescale 1 " in again
    code, _, stderr = run_cli(shlex.split(again)[1:], capsys)
    assert code == 0, f"{again}: {stderr}"
    out = shlex.split(again)[shlex.split(again).index("--out") + 1]
    checked = json.loads((tmp_path / out / "rewrite.json").read_text())["check_quant"]["schemes"]["W8A8"]["real"]
    assert checked["original"] == pytest.approx(data["check_quant"]["schemes"]["W8A8"]["real"]["rewritten"], rel=1e-6)
    # rescaling by a power of two leaves int8 as it was: the report says --smooth may help, with a command it takes
    assert data["check_quant"]["schemes"]["W8A8"]["rewrite_helps"] is False
    assert "--smooth 0.5 --check-quant w8a8" in smooth and re.search(r"rescaling does not help int8", summary, re.I)
    code, _, stderr = run_cli([*shlex.split(smooth)[1:], "--corpus", str(corpus), "--seq-len", "32"], capsys)
    assert code == 0, f"{smooth}: {stderr}"
    out = shlex.split(smooth)[shlex.split(smooth).index("--out") + 1]
    assert json.loads((tmp_path / out / "rewrite.json").read_text())["rewrites"][0]["kind"] == "smooth"


def test_a_rewrite_that_leaves_float16_overflowing_says_to_load_float32(tmp_path, capsys):
    _saved("llama", tmp_path / "model")
    corpus = _corpus(tmp_path / "corpus.txt")
    argv = ["rewrite", str(tmp_path / "model"), "--rotate", "--corpus", str(corpus), "--seq-len", "32"]
    code, stdout, stderr = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 0, stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "rewrite.json").read_text())["after"]["nonfinite_modules_float16"] > 0
    line = _load_line(report)
    assert "dtype=torch.float32" in line and "float16 still gives inf/NaN" in report
    assert "--smooth" not in report and "int8" not in report.split("## Per block")[0]  # no --check-quant, no claims
    loaded = eval(line, {"AutoModelForCausalLM": tf.AutoModelForCausalLM, "torch": torch})
    assert next(loaded.parameters()).dtype == torch.float32
