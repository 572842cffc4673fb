"""`massact train gpt2` and `massact experiment attention-bias` on bad input: one line, exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

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


def test_cuda_without_cuda_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for command in (["train", "gpt2"], ["experiment", "attention-bias"]):
        code, err = run_cli([*command, "--device", "cuda", "--out", str(tmp_path / "run")], capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert "--device cuda: CUDA is not available here" in err
        assert not (tmp_path / "run").exists()
    code, err = run_cli(["train", "gpt2", "--device", "tpu", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "--device tpu: use cpu or cuda" in err and not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    code, err = run_cli(["train", "gpt2", "--resume", "--out", str(tmp_path / "new_run"), "--device", "cpu"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds no checkpoint to continue; drop --resume" in err
    assert not (tmp_path / "new_run").exists()


def test_json_summary_staged_and_the_run_loads_as_a_model(tmp_path, capsys):
    from massact.models.registry import find_loader
    from massact.train.checkpoint import load_trained

    corpus = tmp_path / "lines.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "gpt2", "--corpus", str(corpus), "--out", str(out), "--max-steps", "2", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--json"])
    assert exit_info.value.code in (0, None)
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data == json.loads((out / "summary.json").read_text())
    assert data["step"] == 2 and data["config"]["model"]["attention"] == "default"
    val_log = (out / "val_log.csv").read_text().splitlines()
    assert f"{data['final_val_loss']}" in val_log[-1]
    assert not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".partial"))]  # nothing half-written
    loader = find_loader(out)
    assert loader is not None and loader.name == "massact-train" and find_loader(tmp_path) is None
    loaded = loader.load(out, device="cpu", dtype="float32")
    model, _ = load_trained(out)
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.tokenizer("the king")["input_ids"]
