"""Exports: planted answers, exact round trips, bad formats and a model without massive activations."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import yaml
from cli_runner import run
from planting import BLOCK, CHANNEL, DIM, PLANT_TOKEN, WINDOWS, planted_gpt2, planted_llama

from massact.errors import MassactError
from massact.export import FILES, FORMATS, ExportFiles, measure_exports, parse_formats, read_export
from massact.export.recipe import smoothing_mappings
from massact.models.structure import find_structure
from massact.outputs import to_json_text


@pytest.fixture(scope="module")
def exported():
    loaded = planted_llama()
    return loaded, measure_exports(loaded, WINDOWS, corpus="planted", batch_size=1, progress=False)


def test_parse_formats():
    assert parse_formats(["all"]) == list(FORMATS)
    assert parse_formats(["sites,outlier-tokens", "sites"]) == ["sites", "outlier-tokens"]
    with pytest.raises(MassactError, match="does not exist"):
        parse_formats(["gguf"])
    with pytest.raises(MassactError, match="`formats` is empty"):
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
    assert sorted(p.name for p in written) == sorted(FILES[name] for name in FORMATS)
    assert read_export(tmp_path / FILES["sites"]) == json.loads(to_json_text(result.sites()))
    assert read_export(tmp_path / FILES["outlier-tokens"]) == json.loads(to_json_text(result.outlier_tokens()))
    scales = read_export(tmp_path / FILES["act-scales"])
    assert scales.keys() == result.act_scales.keys()
    assert all(torch.equal(scales[k], result.act_scales[k]) for k in scales)


@torch.no_grad()
def test_written_files_hold_the_values_a_plain_forward_gives(exported, tmp_path):
    """The files as a reader sees them, against WINDOWS run through the model with plain hooks: the planted token
    counted by hand, the planted site's mean, and every Linear's per-channel input maximum."""
    loaded, result = exported
    result.write(tmp_path, FORMATS)
    inputs, outputs = {}, []
    linears = {n: m for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear)}
    handles = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.update({n: a[0]})) for n, m in linears.items()]
    handles.append(loaded.model.model.layers[BLOCK].register_forward_hook(lambda m, a, o: outputs.append(o)))
    loaded.model(input_ids=WINDOWS)
    for handle in handles:
        handle.remove()
    scales = read_export(tmp_path / FILES["act-scales"])
    assert scales.keys() == linears.keys()
    for name, x in inputs.items():
        torch.testing.assert_close(scales[name], x.abs().amax(dim=(0, 1)), rtol=0, atol=0, msg=name)
    (token,) = read_export(tmp_path / FILES["outlier-tokens"])["tokens"]
    assert (token["token_id"], token["count"], token["at_first_position"], token["elsewhere"]) == (PLANT_TOKEN, 3, 1, 2)
    planted = [s for s in read_export(tmp_path / FILES["sites"])["sites"] if s["block"] == BLOCK and s["dim"] == DIM]
    hidden = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    values = hidden[[0, 1, 1], [0, 2, 5], DIM]  # the planted token's three places in WINDOWS
    assert sum(s["count"] for s in planted) == 3
    assert sum(s["mean"] * s["count"] for s in planted) == pytest.approx(float(values.sum()), rel=1e-5)


@pytest.mark.slow
def test_cli_unknown_format_is_one_line_exit_2(tmp_path, capsys, tiny_model_dir):
    code, _, err = run(["export", str(tiny_model_dir), "--format", "gguf", "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "--format gguf: does not exist" in err
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
    assert data["formats"] == list(FORMATS) and sorted(data["files"]) == sorted(FILES[name] for name in FORMATS)
    assert {FILES[name] for name in FORMATS} <= {p.name for p in out.iterdir()}
    assert data["outlier_tokens"] == read_export(out / FILES["outlier-tokens"])
    scales = read_export(out / FILES["act-scales"])
    assert data["act_scales"] == pytest.approx({k: float(v.max()) for k, v in scales.items()})


def test_cli_export_needs_out_or_json_before_loading(capsys):
    code, stdout, err = run(["export", "no-such-model"], capsys)
    assert code == 2 and "give --out DIR" in err and stdout == ""


# --- files other tools read: SmoothQuant's act scales and an llm-compressor recipe -------------------------

PLANTED = {"llama": planted_llama, "gpt2": planted_gpt2}
# What each family's layer norms feed, inside a block (the known structure of LLaMA and GPT-2 blocks).
FEEDS = {
    "llama": {
        "input_layernorm": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
        "post_attention_layernorm": {"mlp.gate_proj", "mlp.up_proj"},
    },
    "gpt2": {"ln_1": {"attn.c_attn"}, "ln_2": {"mlp.c_fc"}},
}
WRITER = {"llama": f"model.layers.{BLOCK}.mlp.down_proj", "gpt2": f"transformer.h.{BLOCK}.mlp.c_proj"}


@pytest.fixture(scope="module", params=sorted(PLANTED))
def recipe_export(request, tmp_path_factory):
    """A planted model's export with every format, written to a folder and read back as the tools read it."""
    loaded = PLANTED[request.param]()
    result = measure_exports(loaded, WINDOWS, corpus="planted", batch_size=1, recipe=True, progress=False)
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    ExportFiles(result, list(FORMATS)).write(folder)
    scales = torch.load(folder / FILES["act-scales"], weights_only=True)  # SmoothQuant's own loading
    recipe = yaml.safe_load((folder / FILES["recipe"]).read_text(encoding="utf-8"))
    return request.param, loaded, folder, scales, recipe


def _matches(pattern: str, name: str) -> bool:
    """llm-compressor's rule: `re:` patterns are regexes matched from the start, other names exact."""
    return re.match(pattern[3:], name) is not None if pattern.startswith("re:") else pattern == name


def _modifiers(recipe: dict) -> dict:
    """The modifiers of the recipe's one stage, checked against llm-compressor's documented layout."""
    ((stage_name, stage),) = recipe.items()
    ((group_name, modifiers),) = stage.items()
    assert stage_name.endswith("_stage") and group_name.endswith("_modifiers")
    assert list(modifiers) == ["SmoothQuantModifier", "GPTQModifier"]
    return modifiers


def test_recipe_follows_the_llm_compressor_layout(recipe_export):
    family, loaded, _, _, recipe = recipe_export
    modifiers = _modifiers(recipe)
    smooth, gptq = modifiers["SmoothQuantModifier"], modifiers["GPTQModifier"]
    assert set(smooth) == {"smoothing_strength", "mappings"} and 0 < smooth["smoothing_strength"] <= 1
    assert set(gptq) == {"targets", "scheme", "ignore"}
    assert gptq["targets"] == ["Linear"] and gptq["scheme"] == "W8A8"
    names = [n for n, _ in loaded.model.named_modules()]
    for balance, norm in smooth["mappings"]:
        assert isinstance(balance, list) and isinstance(norm, str)
        assert all(any(_matches(p, n) for n in names) for p in [*balance, norm])
    assert all(name in names for name in gptq["ignore"])
    found = {norm: {p for p in balance} for balance, norm in smooth["mappings"]}
    expected = {
        f"re:.*{re.escape(norm)}$": {f"re:.*{re.escape(linear)}$" for linear in linears}
        for norm, linears in FEEDS[family].items()
    }
    assert found == expected


@torch.no_grad()
def test_recipe_keeps_the_head_and_the_linears_with_massive_inputs(recipe_export):
    family, loaded, _, _, recipe = recipe_export
    ignore = _modifiers(recipe)["GPTQModifier"]["ignore"]
    peaks: dict[str, float] = {}
    hooks = [
        module.register_forward_pre_hook(lambda m, a, name=name: peaks.update({name: float(a[0].abs().max())}))
        for name, module in loaded.model.named_modules()
        if hasattr(module, "weight")
        and module.weight is not None
        and module.weight.dim() == 2
        and name != "lm_head"
        and "wte" not in name
        and "wpe" not in name
        and "embed" not in name
    ]
    loaded.model(input_ids=WINDOWS)
    for hook in hooks:
        hook.remove()
    order = [name for name, _ in loaded.model.named_modules()]
    assert ignore == ["lm_head", *sorted((n for n, peak in peaks.items() if peak > 100), key=order.index)]
    # LLaMA's planted writer reads a massive input (SiLU(2x) * 2x of the carrier); GPT-2's writes with a 400 weight
    assert (WRITER[family] in ignore) == (family == "llama")


def _smooth(model: torch.nn.Module, scales: dict, mappings: list, alpha: float) -> None:
    """SmoothQuant's `smooth_ln_fcs` over every mapped norm, with the Linears of its own block."""
    modules = dict(model.named_modules())
    for balance, norm_pattern in mappings:
        for norm_name in [n for n in modules if _matches(norm_pattern, n)]:
            block = norm_name.rsplit(".", 1)[0] + "."
            fcs = [n for n in modules if n.startswith(block) and any(_matches(p, n) for p in balance)]
            weights = [
                modules[n].weight if isinstance(modules[n], torch.nn.Linear) else modules[n].weight.T for n in fcs
            ]
            act = scales[fcs[0]]
            weight_max = torch.cat([w.abs() for w in weights], dim=0).amax(dim=0).clamp(min=1e-5)
            s = (act.pow(alpha) / weight_max.pow(1 - alpha)).clamp(min=1e-5)
            norm = modules[norm_name]
            norm.weight.div_(s)
            if getattr(norm, "bias", None) is not None:
                norm.bias.div_(s)
            for w in weights:
                w.mul_(s)


@torch.no_grad()
def test_act_scales_and_mappings_smooth_the_model_without_changing_its_output(recipe_export):
    family, loaded, _, scales, recipe = recipe_export
    smooth = _modifiers(recipe)["SmoothQuantModifier"]
    before = loaded.model(input_ids=WINDOWS).logits
    model = copy.deepcopy(loaded.model)
    _smooth(model, scales, smooth["mappings"], smooth["smoothing_strength"])
    changed = [n for (n, a), b in zip(model.named_parameters(), loaded.model.parameters()) if not torch.equal(a, b)]
    expected = {f"{norm}.weight" for norm in FEEDS[family]} | {
        f"{fc}.weight" for fcs in FEEDS[family].values() for fc in fcs
    }
    assert {re.sub(r"^.*?\.\d+\.", "", n) for n in changed} >= expected  # every mapped norm and Linear rescaled
    assert torch.allclose(model(input_ids=WINDOWS).logits, before, rtol=1e-4, atol=1e-4)


def test_export_report_says_which_tool_reads_each_file(recipe_export):
    _, _, folder, _, _ = recipe_export
    report = (folder / "report.md").read_text(encoding="utf-8")
    for file, tool in (
        (FILES["act-scales"], "SmoothQuant"),
        (FILES["recipe"], "llm-compressor"),
        (FILES["sites"], "massact intervene --means"),
        (FILES["outlier-tokens"], "StreamingLLM"),
    ):
        assert f"### {file}: " in report and tool in report.split(f"### {file}: ", 1)[1].split("###")[0]
    assert "3 token ids" not in report and "1 token ids carry them" in report  # the planted token only


def test_sandwich_norm_blocks_map_the_norms_that_feed_linears():
    """Gemma-3 blocks norm after attention too: only the norms before q/k/v and before the MLP feed Linears."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=32, sliding_window=8,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config).eval()
    mappings = smoothing_mappings(model, find_structure(model), WINDOWS[:1])
    assert mappings == [
        [
            [r"re:.*self_attn\.k_proj$", r"re:.*self_attn\.q_proj$", r"re:.*self_attn\.v_proj$"],
            r"re:.*input_layernorm$",
        ],
        [[r"re:.*mlp\.gate_proj$", r"re:.*mlp\.up_proj$"], r"re:.*pre_feedforward_layernorm$"],
    ]


def test_sites_file_is_what_intervene_means_loads(recipe_export):
    from massact.interventions import read_means

    _, _, folder, _, _ = recipe_export
    sites = read_export(folder / FILES["sites"])
    means = read_means(folder / FILES["sites"])
    assert sites["window_shape"] == list(WINDOWS.shape)
    assert sites["sites"] and means.entries == {
        (s["block"], s["dim"], s["token_kind"]): (pytest.approx(s["mean"]), s["count"]) for s in sites["sites"]
    }
