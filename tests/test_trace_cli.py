"""`massact trace` from the command line: bad inputs refused before loading, JSON, whole tables."""

from __future__ import annotations

import io
import json

import pytest
from cli_runner import run
from planting import PROMPT, planted_gpt2, planted_llama
from rich.console import Console

from massact.trace import TraceConfig, TraceInputs
from massact.trace import run as trace_run

BEFORE_LOADING = {
    "share above 1": (["--share", "2"], "--share"),
    "share of 0": (["--share", "0"], "--share"),
    "negative block": (["--block", "-1"], "--block"),
    "negative dim": (["--dim", "-3"], "--dim"),
    "negative token": (["--token", "-1"], "--token"),
    "no sites": (["--max-sites", "0"], "--max-sites"),
    "no entries": (["--top", "0"], "--top"),
    "no windows": (["--samples", "0"], "--samples"),
    "one-token windows": (["--seq-len", "1"], "--seq-len"),
    "no batch": (["--batch-size", "0"], "--batch-size"),
    "unknown corpus": (["--corpus", "no-such-corpus"], "no-such-corpus"),
    "prompt and file": (["--prompt", "a", "--text-file", "x.txt"], "not both"),
    "empty prompt": (["--prompt", "  "], "prompt is empty"),
    "bad thresholds": (["--abs-threshold", "-1"], "threshold"),
}


@pytest.mark.parametrize("argv,expect", BEFORE_LOADING.values(), ids=list(BEFORE_LOADING))
def test_bad_option_is_one_line_exit_2_before_loading(argv, expect, tmp_path, capsys):
    out = tmp_path / "x"
    no_model = tmp_path / "empty"  # a folder with no model: a refusal that names the option proves it was never loaded
    no_model.mkdir()
    code, stdout, err = run(["trace", str(no_model), *argv, "--out", str(out)], capsys)
    assert code == 2 and stdout == ""
    assert err.strip().count("\n") == 0 and err.startswith("massact: error: ") and expect in err, err
    assert not out.exists()


@pytest.mark.parametrize("build", [planted_llama, planted_gpt2], ids=["llama", "gpt2"])
def test_tables_are_never_cut_when_stdout_is_not_a_terminal(build):
    loaded = build()
    config = TraceConfig(add_special_tokens=False, samples=2, seq_len=8, progress=False)
    result = trace_run(loaded, TraceInputs(PROMPT, [" ".join([PROMPT] * 10)]), config)
    assert result.verification["restored_exact"] and result.quant_risk
    buffer = io.StringIO()
    result.show(Console(file=buffer, width=40, force_terminal=False))
    shown = buffer.getvalue()
    assert "…" not in shown
    large = [row["max_abs"] for row in result.quant_risk if row["max_abs"] >= 1000]
    assert large and all(f"{value:,.1f}" in shown for value in large)
    assert f"{result.sites[0].peak_value:,.1f}" in shown


@pytest.mark.slow
def test_trace_smollm2_dim_507(tmp_path, capsys, smollm2):
    out = tmp_path / "trace"
    argv = ["trace", "--no-verify", "--samples", "1", "--seq-len", "32", "--json", "--out", str(out), "--device", "cpu"]
    code, stdout, _ = run(argv, capsys)
    assert code in (0, None)
    data = json.loads(stdout)
    assert data == json.loads((out / "trace.json").read_text())
    assert data["prefix_tokens"] == [] and data["windows"]["seq_len"] == 32
    site = data["sites"][0]
    assert (site["token"], site["dim"], site["block"]) == (0, 507, 11)
    assert site["writer"] == "mlp" and site["module"] == "model.layers.11.mlp.down_proj"
    assert site["expert"] is None and site["experts"] == []
    assert site["mlp_update"] > 0.9 * site["jump"]
    needed = site["entries_needed"]["of_jump"]
    cumulative = [e["cumulative_share_of_jump"] for e in site["entries"]]
    assert cumulative[needed - 1] >= 0.9 and (needed == 1 or cumulative[needed - 2] < 0.9)
    assert all(e["row"] == 507 and e["block"] == 11 for e in site["entries"])
    assert len(data["quant_risk"]) == 30 and data["quant_risk"][11]["massive_entries"] >= 1
    assert (out / "report.md").read_text().startswith("# massact trace")


@pytest.mark.slow
def test_trace_model_without_massive_activations(tmp_path, capsys, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "trace"
    argv = ["trace", str(tiny_model_dir), "--corpus", str(corpus), "--samples", "1", "--seq-len", "16"]
    code, stdout, _ = run([*argv, "--out", str(out), "--device", "cpu"], capsys)
    assert code in (0, None)
    assert "No massive activations" in stdout
    data = json.loads((out / "trace.json").read_text())
    assert data["sites"] == [] and data["entries"] == [] and len(data["quant_risk"]) == 2
