"""Long passes are never silent: quant's sensitivity says each block, export each batch of windows, also where no
progress bar is drawn (a pipe or a log: pytest's captured stderr is one)."""

from __future__ import annotations

import re

import pytest
from cli_runner import run as run_cli
from planting import WINDOWS, planted_gpt2, planted_llama
from planting import marked_windows as windows
from planting import planted_for_quant as planted

from massact.export import measure_exports
from massact.format import fmt_ppl
from massact.quant import QuantConfig, QuantInputs, run


@pytest.fixture
def every_step(monkeypatch):
    """A progress line for every step (the default allows one per 10 s, the first and the last)."""
    monkeypatch.setattr("massact.progress.LINE_EVERY_S", 0.0)


@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_sensitivity_reports_every_block_with_its_result(family, every_step, capsys):
    inputs = QuantInputs(windows=windows(2, seed=1), calibration=windows(2, seed=2), corpus="planted", seed=1)
    config = QuantConfig(schemes=("W8",), strategies=("none",), sensitivity="W8A8", sensitivity_samples=2)
    result = run(planted(family), inputs, config)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sensitivity W8A8:")]
    blocks = result.sensitivity["blocks"]
    assert len(lines) == len(blocks) == 4
    for number, (line, row) in enumerate(zip(lines, blocks, strict=True), 1):
        change = f"{row['ratio'] - 1:+.1%}"
        assert (
            line
            == f"sensitivity W8A8: {number}/4 blocks (block {row['block']}: {fmt_ppl(row['perplexity'])}, {change})"
        )


def test_sensitivity_lines_are_thinned_but_first_and_last_stay(capsys):
    inputs = QuantInputs(windows=windows(2, seed=1), calibration=windows(2, seed=2))
    config = QuantConfig(schemes=("W8",), strategies=("none",), sensitivity="W8A8", sensitivity_samples=1)
    run(planted("gemma"), inputs, config)  # 4 blocks in far less than 10 s
    counts = re.findall(r"^sensitivity W8A8: (\d)/4 blocks", capsys.readouterr().err, flags=re.M)
    assert counts == ["1", "4"]
    run(planted("gemma"), inputs, QuantConfig(schemes=("W8",), strategies=("none",), progress=False))
    assert "sensitivity" not in capsys.readouterr().err  # --json: nothing


@pytest.mark.parametrize("make", (planted_llama, planted_gpt2), ids=("llama", "gpt2"))
def test_export_pass_reports_every_batch_of_windows(make, every_step, capsys):
    result = measure_exports(make(), WINDOWS, corpus="planted", batch_size=1, description="export")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("export:")]
    carried = len(result.token_counts)
    assert carried == 1  # the planted token
    assert lines == [
        f"export: 1/2 windows ({carried} token ids carry massive activations so far)",
        f"export: 2/2 windows ({carried} token ids carry massive activations so far)",
    ]
    measure_exports(make(), WINDOWS, corpus="planted", batch_size=1, progress=False)
    assert "export" not in capsys.readouterr().err


def test_export_command_says_each_step_before_the_pass(tmp_path, capsys, tiny_model_dir, every_step):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    argv = ["export", str(tiny_model_dir), "--corpus", str(corpus), "--samples", "3", "--seq-len", "16"]
    code, _, err = run_cli([*argv, "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "out")], capsys)
    assert code in (0, None)
    lines = err.splitlines()
    expected = [
        f"export: 3 windows of 16 tokens from {corpus} through",
        "export: 2/3 windows",
        "export: 3/3 windows",
        "export: which norm feeds which Linears",
    ]
    at = [next(i for i, line in enumerate(lines) if line.startswith(text)) for text in expected]
    assert at == sorted(at)  # in this order, before the files are written
