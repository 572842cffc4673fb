"""`massact trace` from the command line."""

from __future__ import annotations

import json

import pytest
from cli_runner import run


def test_bad_share_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = run(["trace", "default", "--share", "2", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "--share" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_trace_smollm2_dim_507(tmp_path, capsys, smollm2):
    out = tmp_path / "trace"
    argv = ["trace", "--no-verify", "--samples", "1", "--seq-len", "32", "--json", "--out", str(out), "--device", "cpu"]
    code, stdout, _ = run(argv, capsys)
    assert code in (0, None)
    data = json.loads(stdout)
    assert data == json.loads((out / "trace.json").read_text())
    site = data["sites"][0]
    assert (site["token"], site["dim"], site["block"]) == (0, 507, 11)
    assert site["writer"] == "mlp" and site["module"] == "model.layers.11.mlp.down_proj"
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
