"""Exports: planted answers, exact round trips, bad formats and a model without massive activations."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run
from test_trace import BLOCK, CHANNEL, DIM, PLANT_TOKEN, planted_llama

from massact.errors import MassactError
from massact.outputs import to_json_text
from massact.quant.export import FILES, FORMATS, measure_exports, parse_formats, read_export

# Windows of token ids: the planted token sits at position 0 of window 0 and at positions 2 and 5 of window 1.
WINDOWS = torch.tensor([[PLANT_TOKEN, 1, 2, 3, 4, 6, 7, 8], [1, 2, PLANT_TOKEN, 3, 4, PLANT_TOKEN, 6, 7]])


@pytest.fixture(scope="module")
def exported():
    loaded = planted_llama()
    return loaded, measure_exports(loaded, WINDOWS, corpus="planted", batch_size=1, progress=False)


def test_parse_formats():
    assert parse_formats(["all"]) == list(FORMATS)
    assert parse_formats(["sites,outlier-tokens", "sites"]) == ["sites", "outlier-tokens"]
    with pytest.raises(MassactError, match="does not exist"):
        parse_formats(["gguf"])
    with pytest.raises(MassactError, match="give --format"):
        parse_formats([])


def test_outlier_tokens_are_the_planted_token(exported):
    _, result = exported
    data = result.outlier_tokens()
    assert [t["token_id"] for t in data["tokens"]] == [PLANT_TOKEN]
    token = data["tokens"][0]
    assert (token["count"], token["at_first_position"], token["elsewhere"], token["occurrences"]) == (3, 1, 2, 3)
    assert token["dims"] == [DIM] and token["blocks"][0] == BLOCK
    assert data["first_position"] == {"windows": 2, "carrying": 1, "rate": 0.5}


def test_sites_have_the_planted_dim_and_means(exported):
    loaded, result = exported
    data = result.sites()
    assert data["dims"] == [DIM] and data["blocks"][0] == BLOCK
    first = [s for s in data["sites"] if s["block"] == BLOCK]
    assert sum(s["count"] for s in first) == 3
    # the mean of the planted site equals the block output at those three positions
    outputs = []
    hook = loaded.model.model.layers[BLOCK].register_forward_hook(
        lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        loaded.model(input_ids=WINDOWS)
    hook.remove()
    values = torch.stack([outputs[0][0, 0, DIM], outputs[0][1, 2, DIM], outputs[0][1, 5, DIM]])
    mean = sum(s["mean"] * s["count"] for s in first) / 3
    assert mean == pytest.approx(float(values.mean()), rel=1e-5)


def test_act_scales_match_a_plain_hook_and_point_at_the_planted_channel(exported):
    loaded, result = exported
    linear_names = {n for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(result.act_scales) == linear_names
    name = f"model.layers.{BLOCK}.mlp.down_proj"
    seen = []
    module = loaded.model.get_submodule(name)
    hook = module.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        loaded.model(input_ids=WINDOWS)
    hook.remove()
    expected = seen[0].abs().amax(dim=(0, 1))
    assert torch.equal(result.act_scales[name], expected)
    assert int(result.act_scales[name].argmax()) == CHANNEL


def test_exports_round_trip(exported, tmp_path):
    _, result = exported
    written = result.write(tmp_path, FORMATS)
    assert sorted(p.name for p in written) == sorted(FILES.values())
    assert read_export(tmp_path / FILES["sites"]) == json.loads(to_json_text(result.sites()))
    assert read_export(tmp_path / FILES["outlier-tokens"]) == json.loads(to_json_text(result.outlier_tokens()))
    scales = read_export(tmp_path / FILES["act-scales"])
    assert scales.keys() == result.act_scales.keys()
    assert all(torch.equal(scales[k], result.act_scales[k]) for k in scales)


@pytest.mark.slow
def test_cli_unknown_format_is_one_line_exit_2(tmp_path, capsys, tiny_model_dir):
    code, _, err = run(["export", str(tiny_model_dir), "--format", "gguf", "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "--format 'gguf' does not exist" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_model_without_massive_activations_writes_empty_valid_exports(tmp_path, capsys, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["export", str(tiny_model_dir), "--format", "all", "--corpus", str(corpus)]
    code, stdout, _ = run([*argv, "--samples", "2", "--seq-len", "32", "--out", str(out), "--device", "cpu"], capsys)
    assert code in (0, None)
    assert "No massive activations" in stdout
    sites = read_export(out / FILES["sites"])
    tokens = read_export(out / FILES["outlier-tokens"])
    assert sites["sites"] == [] and sites["dims"] == [] and tokens["tokens"] == []
    assert tokens["first_position"]["carrying"] == 0
    scales = read_export(out / FILES["act-scales"])
    assert "model.layers.0.mlp.down_proj" in scales and scales["model.layers.0.mlp.down_proj"].shape == (64,)


@pytest.mark.slow
def test_cli_writes_every_format_by_default_and_prints_json(tmp_path, capsys, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["export", str(tiny_model_dir), "--corpus", str(corpus), "--samples", "2", "--seq-len", "32"]
    code, stdout, _ = run([*argv, "--out", str(out), "--json", "--device", "cpu"], capsys)
    assert code in (0, None)
    data = json.loads(stdout)
    assert data["formats"] == list(FORMATS) and sorted(data["files"]) == sorted(FILES.values())
    assert set(FILES.values()) <= {p.name for p in out.iterdir()}
    assert data["outlier_tokens"] == read_export(out / FILES["outlier-tokens"])
    scales = read_export(out / FILES["act-scales"])
    assert data["act_scales"] == pytest.approx({k: float(v.max()) for k, v in scales.items()})


def test_cli_export_needs_out_or_json_before_loading(capsys):
    code, stdout, err = run(["export", "no-such-model"], capsys)
    assert code == 2 and "give --out DIR" in err and stdout == ""
