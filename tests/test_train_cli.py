"""`massact train gpt2` and `massact experiment attention-bias` on bad input: one line, exit status 2."""

from __future__ import annotations

import json

import pytest

from massact.cli import main
from massact.train.presets import get_preset

TEXT = "".join(f"Line {i}: the king spoke to the queen, and the fool laughed at them both.\n" for i in range(400))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "gpt2", "--preset", "huge"], "unknown preset 'huge'; use one of cpu-small, gpt2-124m"),
        (["train", "gpt2", "--attention", "alibi"], "unknown attention variant 'alibi'; use one of default, sink"),
        (["experiment", "attention-bias", "--preset", "huge"], "unknown preset 'huge'"),
    ],
)
def test_unknown_preset_or_variant(args, message, tmp_path, capsys):
    code, err = run_cli([*args, "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_corpus_too_small_for_one_batch(tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("To be, or not to be, that is the question.\n", encoding="utf-8")
    code, err = run_cli(["train", "gpt2", "--corpus", str(corpus), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "corpus is too small" in err and err.count("\n") == 1


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    corpus = tmp_path / "lines.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = str(tmp_path / "run")
    common = ["train", "gpt2", "--corpus", str(corpus), "--out", out, "--max-steps", "1", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:  # typer exits 0 after a successful command
        main(common)
    assert exit_info.value.code in (0, None)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
    code, err = run_cli([*common, "--attention", "bias", "--resume"], capsys)
    assert code == 2 and "another config" in err and "attention 'default' != 'bias'" in err
    code, err = run_cli(common, capsys)
    assert code == 2 and "already holds a checkpoint" in err


def test_experiment_trains_three_variants_and_reports(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "exp"
    args = ["experiment", "attention-bias", "--corpus", str(corpus), "--max-steps", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    results = json.loads((out / "results.json").read_text())
    n_layer = get_preset("cpu-small").model.n_layer  # one monitor row per block of the preset's model
    assert list(results["variants"]) == ["default", "sink", "bias"]
    for variant, summary in results["variants"].items():
        assert results["configs"][variant]["model"]["attention"] == variant
        assert results["configs"][variant]["seed"] == 0 and summary["steps"] == 2
        assert len(summary["blocks"]) == n_layer and [e["step"] for e in summary["emergence"]] == [0, 2]
    losses = {v: s["final_val_loss"] for v, s in results["variants"].items()}
    for name in ("val_loss", "top1_per_block", "ratio_per_block", "emergence"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert f"| default | {losses['default']:.4f} |" in report
    # a second call finds the finished runs and reports the same numbers without training again
    with pytest.raises(SystemExit):
        main([*args, "--device", "cpu"])
    again = json.loads((out / "results.json").read_text())
    assert {v: s["final_val_loss"] for v, s in again["variants"].items()} == losses
