"""`massact train gpt2` and `massact experiment attention-variants / attention-bias`: results and bad input."""

from __future__ import annotations

import json
from pathlib import Path

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
        (["train", "gpt2", "--preset", "huge"], "unknown preset 'huge'; use one of backcopy-test, backcopy-cpu"),
        (["train", "gpt2", "--attention", "alibi"], "unknown attention variant 'alibi'; use one of default, sink-"),
        (["experiment", "attention-variants", "--variants", "default,alibi"], "unknown attention variant 'alibi'"),
        (["experiment", "attention-variants", "--preset", "cpu-small"], "does not fit --task bigram-backcopy"),
        (["experiment", "attention-variants", "--variants", "bias,attn-bias"], "listed twice"),
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
    assert code == 2 and "another config" in err and "attention 'default' != 'attn-bias'" in err
    code, err = run_cli(common, capsys)
    assert code == 2 and "already holds a checkpoint" in err


@pytest.mark.slow  # trains three GPT-2s of the cpu-small preset
def test_attention_bias_is_the_text_case_of_attention_variants(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "exp"
    args = ["experiment", "attention-bias", "--corpus", str(corpus), "--max-steps", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    data = json.loads((out / "experiment.json").read_text())
    n_layer = get_preset("cpu-small").model.n_layer  # one final row per block of the preset's model
    assert data["task"] == str(corpus) and data["preset"] == "cpu-small"
    assert [(r["variant"], r["seed"]) for r in data["rows"]] == [("default", 0), ("sink-token", 0), ("attn-bias", 0)]
    for row in data["rows"]:
        assert row["steps"] == 2 and len(row["blocks"]) == n_layer and row["curves"]["step"] == [0, 2]
        run = json.loads((out / "runs" / row["variant"] / "seed0" / "summary.json").read_text())
        assert run["config"]["model"]["attention"] == row["variant"] and run["final_val_loss"] == row["final_loss"]


def _attention_variants(out: Path) -> tuple[list[str], dict]:
    """Bigram-Backcopy, two variants x two seeds, into `out`: the arguments and experiment.json."""
    args = ["experiment", "attention-variants", "--preset", "backcopy-test", "--variants", "default,attn-bias"]
    args += ["--seeds", "2", "--out", str(out), "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return args, json.loads((out / "experiment.json").read_text())


def test_attention_variants_rows(tmp_path):
    out = tmp_path / "exp"
    _, data = _attention_variants(out)
    assert data["task"] == "bigram-backcopy" and data["config"]["task"] == "bigram-backcopy"
    keys = ("variant", "seed", "final_loss", "sink_rate", "residual_peak", "value_drain", "kurtosis", "top1_median")
    assert [(r["variant"], r["seed"]) for r in data["rows"]] == [("default", 0), ("default", 1)] + [
        ("attn-bias", 0),
        ("attn-bias", 1),
    ]
    preset = get_preset("backcopy-test")
    for row in data["rows"]:
        assert set(keys) <= set(row) and row["steps"] == preset.max_steps
        assert row["curves"]["step"] == [0, 6, 12] and len(row["curves"]["sink_rate"]) == 3
        assert 0 <= row["sink_rate"] <= 1 and row["final_loss"] == row["curves"]["loss"][-1]
        blocks = row["blocks"]
        assert len(blocks) == preset.model.n_layer
        assert row["residual_peak"] == max(b["residual_peak"] for b in blocks)
        assert row["value_drain"] == min(b["value_drain"] for b in blocks)
    summary = data["summary"]
    losses = [r["final_loss"] for r in data["rows"] if r["variant"] == "attn-bias"]
    assert summary["attn-bias"]["final_loss"]["mean"] == pytest.approx(sum(losses) / 2)
    peaks = {v: summary[v]["residual_peak"]["mean"] for v in ("default", "attn-bias")}
    assert summary["attn-bias"]["factor_vs_default"]["residual_peak"] == pytest.approx(
        peaks["default"] / peaks["attn-bias"]
    )
    for name in ("loss", "sink_rate", "residual_peak", "value_drain", "kurtosis", "top1_median"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert (out / "report.html").is_file() and "| attn-bias | 1 |" in (out / "report.md").read_text()


@pytest.mark.slow  # the whole experiment, then the same command again
def test_attention_variants_rerun_reads_the_finished_runs_back_training_nothing(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    args, data = _attention_variants(out)
    state = out / "runs" / "default" / "seed0" / "checkpoint" / "state.json"
    stamp = state.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("massact.train.gpt2.GPT2.forward", no_training)  # any training step would call it
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    again = json.loads((out / "experiment.json").read_text())
    assert [r["final_loss"] for r in again["rows"]] == [r["final_loss"] for r in data["rows"]]
    assert state.stat().st_mtime_ns == stamp


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


def test_train_gpt2_on_bigram_backcopy_loads_with_its_tokenizer(tmp_path):
    from massact.models.loading import load_model

    out = tmp_path / "run"
    args = ["train", "gpt2", "--preset", "backcopy-test", "--attention", "sink-logit", "--optimizer", "muon"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["task"] == "bigram-backcopy" and summary["config"]["optimizer"] == "muon"
    assert (out / "checkpoint" / "optimizer1.safetensors").is_file()  # Muon's and AdamW's states
    loaded = load_model(str(out), device="cpu", dtype="float32")
    assert loaded.model.config.attention == "sink-logit"
    assert loaded.tokenizer.decode(loaded.tokenizer("<bos> t1 t2")["input_ids"]) == "<bos> t1 t2"


def test_a_diverged_seed_reads_back_into_the_experiments_report(tmp_path):
    """One seed's last measures are not finite (a diverged run): the experiment reads it back and writes its
    report and figures, the mean curve NaN where that seed is, finite where no seed is."""
    out = tmp_path / "exp"
    args, _ = _attention_variants(out)
    state_path = out / "runs" / "attn-bias" / "seed1" / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    last = max(row["step"] for row in state["monitor_rows"])
    for row in state["monitor_rows"]:
        if row["step"] == last:
            row.update(top1="nan", ratio="inf", residual_peak="nan")
    state_path.write_text(json.dumps(state))
    (out / "experiment.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    data = json.loads((out / "experiment.json").read_text())
    diverged = next(r for r in data["rows"] if (r["variant"], r["seed"]) == ("attn-bias", 1))
    assert diverged["curves"]["top1"][-1] == "nan" and diverged["curves"]["top1"][0] != "nan"
    assert (out / "figures" / "top1.png").stat().st_size > 1000
    assert "| attn-bias | 1 |" in (out / "report.md").read_text()
