"""Simulated quantization: exact quantizers, exact transforms, planted outlier tokens, restored models, CLI."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from cli_runner import run as run_cli
from planting import MARK, VOCAB, perplexity_by_hand, plant_massive, quantized_by_hand, tiny_model, word_tokenizer
from planting import marked_windows as windows
from planting import planted_for_quant as planted

from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.quant import (
    QuantConfig,
    QuantInputs,
    calibrate,
    calibration_text,
    load_inputs,
    parse_scheme,
    parse_strategy,
    quant_context,
    run,
    super_weights_from_trace,
)
from massact.quant.schemes import qmax, quantize_activation, quantize_heads, quantize_weight
from massact.quant.simulate import kv_projections, quantized_linears
from massact.quant.strategies import candidates, smooth_scales
from massact.rotations import rotation
from massact.trace import TraceConfig
from massact.trace import run as trace

FAMILIES = ("llama", "gpt2", "gemma")
STRATEGIES = ("none", "outlier-tokens", "smooth", "rotate", "keep-super-weights", "outlier-tokens+smooth")


def rotates(loaded: LoadedModel) -> bool:
    """Whether `massact rewrite --rotate` (so quant's `rotate`) takes the family: GPT-2's LayerNorm does not."""
    return "gpt2" not in loaded.name


def strategies_for(loaded: LoadedModel, names: tuple[str, ...] = STRATEGIES) -> list[str]:
    return [s for s in names if rotates(loaded) or "rotate" not in s]


@pytest.fixture(scope="module", params=FAMILIES)
def case(request):
    loaded = planted(request.param)
    calibration = windows(3, seed=5)
    text = calibration_text(loaded, calibration[0])
    traced = trace(loaded, text, TraceConfig(top=2, verify=False, risk=False, add_special_tokens=False, progress=False))
    supers = super_weights_from_trace(traced.entries(), 2)
    calib = calibrate(loaded, calibration, thresholds=QuantConfig().thresholds, super_weights=supers, progress=False)
    return loaded, calib


def logits(loaded: LoadedModel, ids: torch.Tensor, context=None) -> torch.Tensor:
    with context or nullcontext(), torch.no_grad():
        return loaded.model(input_ids=ids).logits


def state(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---- names -------------------------------------------------------------------------------------------------


def test_scheme_names_parse_to_what_they_say():
    w8a8 = parse_scheme("w8a8")
    assert (w8a8.weight_bits, w8a8.act_bits, w8a8.granularity, w8a8.group, w8a8.kv_bits) == (8, 8, "tensor", None, None)
    assert parse_scheme("W4").group == 128 and parse_scheme("W4g64").group == 64 and parse_scheme("W4A4").group is None
    assert parse_scheme("W8A8-token").granularity == "token" and parse_scheme("W8A8-static").granularity == "static"
    kv = parse_scheme("W4A8-KV4")
    assert (kv.weight_bits, kv.act_bits, kv.kv_bits) == (4, 8, 4)
    for name in ("W8", "W4g128", "W8A8", "W8A8-static", "W8A8-token", "W4A8", "W4A4", "KV8", "KV4", "W4A8-KV4", "A8"):
        assert parse_scheme(name).name == name
    for bad in ("W8X", "", "W1", "KV40", "W8A8-channel"):
        with pytest.raises(MassactError):
            parse_scheme(bad)


def test_strategy_names_are_canonical_and_checked():
    assert parse_strategy("smooth+outlier-tokens") == "outlier-tokens+smooth"
    assert parse_strategy("BEST") == "best"
    for bad in ("smooth+rotate", "rotate+keep-super-weights", "sharpen", ""):
        with pytest.raises(MassactError):
            parse_strategy(bad)
    assert candidates(parse_scheme("KV4")) == ["none", "outlier-tokens"]
    w8 = candidates(parse_scheme("W8"))
    assert "outlier-tokens" not in w8 and "smooth+keep-super-weights" in w8 and "rotate" in w8
    assert "outlier-tokens+rotate" in candidates(parse_scheme("W8A8"))


def test_config_rejects_bad_values_before_any_work():
    for kwargs, message in (
        ({"schemes": ("W8Z",)}, "not known"),
        ({"strategies": ("sharpen",)}, "not known"),
        ({"alpha": 1.5}, "`alpha=1.5`"),
        ({"batch_size": 0}, "`batch_size=0`"),
        ({"schemes": ()}, "at least one scheme"),
    ):
        with pytest.raises(MassactError, match=message):
            QuantConfig(**kwargs)


# ---- quantizers --------------------------------------------------------------------------------------------


def test_weight_quantization_per_channel_and_per_group():
    w = torch.tensor([[1.0, -0.6, 0.26, 0.1], [100.0, 1.0, -2.0, 0.4]])
    q = quantize_weight(w, 2)  # Q = 1: every entry becomes -max, 0 or +max of its row
    assert torch.equal(q, torch.tensor([[1.0, -1.0, 0.0, 0.0], [100.0, 0.0, -0.0, 0.0]]))
    g = quantize_weight(w, 2, group=2)  # groups of 2 columns: each group has its own max
    assert torch.equal(g, torch.tensor([[1.0, -1.0, 0.26, 0.0], [100.0, 0.0, -2.0, 0.0]]))
    x = torch.randn(5, 7)
    assert torch.equal(quantize_weight(x, 8, group=3)[:, 6], quantize_weight(x[:, 6:], 8)[:, 0])


def test_activation_scales_per_tensor_per_token_and_kept_tokens():
    x = torch.tensor([[[1000.0, 1.0], [0.4, -0.3], [0.2, 0.1]]])
    per_tensor = quantize_activation(x, 8)
    step = 1000.0 / qmax(8)
    assert torch.allclose(per_tensor, torch.round(x / step) * step)
    assert float(per_tensor[0, 1:].abs().max()) == 0.0  # everything ordinary rounds to zero
    kept = quantize_activation(x, 8, keep=torch.tensor([[True, False, False]]))
    assert torch.equal(kept[0, 0], x[0, 0])
    step = 0.4 / qmax(8)  # the scale of the remaining tokens alone
    assert torch.allclose(kept[0, 1:], torch.round(x[0, 1:] / step) * step)
    per_token = quantize_activation(x, 8, "token")
    assert torch.allclose(per_token[0, 2], torch.round(x[0, 2] / (0.2 / 127)) * (0.2 / 127))
    batch = quantize_activation(torch.cat([x, x / 1000]), 8)  # one scale for the whole batch tensor
    assert torch.equal(batch[0], per_tensor[0]) and float(batch[1].abs().max()) == 0.0  # the first sets the scale
    static = quantize_activation(x, 8, static_scale=torch.tensor(0.01))
    assert torch.equal(static, torch.clamp(torch.round(x / 0.01), -127, 127) * 0.01)


def test_kv_quantization_is_per_token_and_head():
    x = torch.tensor([[[8.0, 1.0, 0.01, 0.02]]])  # one token, two heads of 2
    q = quantize_heads(x, 4, head_dim=2)
    assert torch.allclose(q, torch.tensor([[[8.0, 1.1428571, 0.0114286, 0.02]]]), atol=1e-6)


def test_rotations_are_orthogonal_and_seeded():
    for size in (8, 12, 14):
        h, _ = rotation(size, seed=3)
        assert torch.allclose(h @ h.T, torch.eye(size, dtype=torch.float64), atol=1e-12)
        assert torch.equal(h, rotation(size, seed=3)[0]) and not torch.equal(h, rotation(size, seed=4)[0])
    for size in (8, 12, 576):  # Sylvester, Paley, Kronecker (12 x 12 x 4): entries +-1/sqrt(size)
        assert torch.allclose(rotation(size)[0].abs() * size**0.5, torch.ones(size, size, dtype=torch.float64))
    assert rotation(14)[1] == "seeded random orthogonal"  # no Hadamard order is 2 mod 4


def test_smooth_scales_are_smoothquants():
    act, weight = torch.tensor([16.0, 1.0, 0.0]), torch.tensor([[4.0, 1.0, 2.0], [-1.0, 0.25, 1.0]])
    scales = smooth_scales(act, weight, alpha=0.5)
    assert torch.allclose(scales, torch.tensor([16**0.5 / 4**0.5, 1.0, 1.0]))


# ---- exactness on planted models ---------------------------------------------------------------------------


def test_every_strategy_at_high_bits_equals_the_unquantized_model(case):
    loaded, calib = case
    ids = windows(2, seed=9)
    reference = logits(loaded, ids)
    for strategy in strategies_for(loaded):
        for name, tolerance in (("W32A32-KV32", 2e-4), ("W24A24-token-KV24", 1e-4)):
            out = logits(loaded, ids, quant_context(loaded, parse_scheme(name), strategy, calib))
            assert relative_error(out, reference) < tolerance, (strategy, name)


def test_rotation_and_smoothing_alone_preserve_the_function(case):
    loaded, calib = case
    ids = windows(2, seed=9)
    reference = logits(loaded, ids)
    for strategy in strategies_for(loaded, ("smooth", "rotate")):
        record: dict = {}
        out = logits(loaded, ids, quant_context(loaded, parse_scheme("W8A8"), strategy, calib, record=record))
        assert relative_error(out, reference) < 1e-4, strategy
        assert set(record) == set(quantized_linears(loaded.model))


def test_outlier_tokens_recover_what_per_tensor_scales_lose(case):
    loaded, calib = case
    assert calib.first_positions == 1 and calib.token_ids == []  # learned: the first position dominates
    ids = windows(2, seed=9)
    reference = logits(loaded, ids)
    scheme = parse_scheme("A8")

    def error(strategy: str, granularity: str = "tensor") -> float:
        chosen = parse_scheme("A8-token") if granularity == "token" else scheme
        return relative_error(
            logits(loaded, ids, quant_context(loaded, chosen, strategy, calib))[:, 1:], reference[:, 1:]
        )

    lost, kept, per_token = error("none"), error("outlier-tokens"), error("none", "token")
    assert lost > 4 * kept  # the dominating token's scale rounds the other tokens away
    assert kept < 2.5 * per_token  # without it, one scale per tensor comes close to one scale per token
    # the kept token itself is computed in full precision: its logits are exactly the model's
    first = logits(loaded, ids, quant_context(loaded, scheme, "outlier-tokens", calib))[:, 0]
    assert torch.allclose(first, reference[:, 0], atol=1e-5, rtol=0)


def with_key_bias(family: str, big: float = 40.0, spread: float = 5.0) -> LoadedModel:
    """`planted(family)` with large query and key biases, as Qwen2's: every key shares one large component."""
    loaded = planted(family)
    generator = torch.Generator().manual_seed(2)
    for block in find_structure(loaded.model).blocks:
        attention = block.self_attn
        for projection in (attention.q_proj, attention.k_proj):
            bias = torch.randn(projection.out_features, generator=generator) * spread
            if projection is attention.k_proj:
                bias[:: attention.head_dim] = big
            projection.bias = torch.nn.Parameter(bias)
    return loaded


@pytest.mark.parametrize(("family", "prefix"), [("qwen2", []), ("llama", [str(MARK)])])
def test_kept_tokens_never_make_the_kv_cache_worse_under_a_shared_key_bias(family, prefix):
    loaded = with_key_bias(family)
    calib = calibrate(loaded, windows(3, seed=5), thresholds=QuantConfig().thresholds, progress=False)
    assert calib.first_positions == 1
    ids = windows(2, seed=9)
    reference = logits(loaded, ids)
    scheme = parse_scheme("KV4")
    errors = {
        s: relative_error(logits(loaded, ids, quant_context(loaded, scheme, s, calib))[:, 1:], reference[:, 1:])
        for s in ("none", "outlier-tokens")
    }
    assert errors["outlier-tokens"] <= errors["none"]
    # the mechanism: K and V are rounded without their bias, which every token shares and the cache holds once
    seen = {}
    k_proj = find_structure(loaded.model).blocks[0].self_attn.k_proj  # its input is unquantized
    with quant_context(loaded, scheme, "outlier-tokens", calib):
        handle = k_proj.register_forward_hook(lambda m, a, out: seen.setdefault("cached", out))
        loaded.model(input_ids=ids)
        handle.remove()
    handle = k_proj.register_forward_hook(lambda m, a, out: seen.setdefault("exact", out))
    with torch.no_grad():
        loaded.model(input_ids=ids)
    handle.remove()
    exact, cached, bias = seen["exact"], seen["cached"], k_proj.bias
    assert torch.equal(cached[:, 0], exact[:, 0])  # the kept first token
    head_dim = k_proj.out_features // loaded.model.config.num_key_value_heads
    expected = quantize_heads(exact[:, 1:] - bias, 4, head_dim) + bias
    assert torch.allclose(cached[:, 1:], expected, atol=1e-5)
    # rounded with the bias in, the error has a part common to every token, which the kept token lacks
    assert float((quantize_heads(exact[:, 1:], 4, head_dim) - exact[:, 1:]).mean(dim=(0, 1)).abs().max()) > 1.0
    # a run reports the same order, with and without a prefix in front of the text
    inputs = QuantInputs(windows=ids, calibration=windows(3, seed=5), prefix_tokens=prefix)
    config = QuantConfig(schemes=("KV4",), strategies=("none", "outlier-tokens"), sensitivity=None, progress=False)
    rows = run(loaded, inputs, config).to_json()["rows"]
    assert rows[1]["perplexity"] <= rows[0]["perplexity"]


def test_keeping_super_weights_recovers_what_their_row_scale_loses(case):
    loaded, calib = case
    ids = windows(2, seed=9)
    reference = logits(loaded, ids)
    scheme = parse_scheme("W16")  # the planted weight (400) sets its row's scale and rounds the row away
    plain = relative_error(logits(loaded, ids, quant_context(loaded, scheme, "none", calib)), reference)
    kept = relative_error(logits(loaded, ids, quant_context(loaded, scheme, "keep-super-weights", calib)), reference)
    assert plain > 20 * kept


def test_model_is_bit_identical_afterwards_also_after_an_error(case):
    loaded, calib = case
    before = state(loaded)
    handles = (len(loaded.model._forward_pre_hooks), len(loaded.model._forward_hooks))
    name, linear = next(iter(quantized_linears(loaded.model).items()))
    context = quant_context(loaded, parse_scheme("W4A4-KV4"), "outlier-tokens+smooth", calib)
    with pytest.raises(RuntimeError, match="boom"), context:
        assert not torch.equal(linear.weight, before[f"{name}.weight"])  # swapped while inside
        raise RuntimeError("boom")
    for strategy in strategies_for(loaded, ("rotate", "keep-super-weights")):
        with quant_context(loaded, parse_scheme("W4A8"), strategy, calib):
            logits(loaded, windows(1, seed=2))
    after = state(loaded)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (len(loaded.model._forward_pre_hooks), len(loaded.model._forward_hooks)) == handles
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in quantized_linears(loaded.model).values())


def test_kv_projections_are_found_in_each_family(case):
    loaded, _ = case
    kv = kv_projections(loaded.model, quantized_linears(loaded.model))
    kinds = sorted({kind for _, _, kind in kv})
    assert kinds == (["qkv"] if "gpt2" in loaded.name else ["k", "v"])
    assert len(kv) == 4 * len(kinds)


def test_super_weights_are_the_planted_entry(case):
    loaded, calib = case
    top = calib.super_weights[0]
    assert top.block == 1 and top.value == pytest.approx(400.0)
    row, column = (4, 5) if "gpt2" not in loaded.name else (5, 4)  # Conv1D stores [in, out]
    assert top.index == (row, column)


# ---- run ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_run_traces_the_super_weights_it_keeps(family):
    loaded = planted(family)
    inputs = QuantInputs(windows=windows(2, seed=1), calibration=windows(2, seed=2))
    config = QuantConfig(schemes=("W16",), strategies=("keep-super-weights",), sensitivity=None, progress=False)
    data = run(loaded, inputs, config).to_json()
    top = data["super_weights"][0]
    row, column = (4, 5) if family != "gpt2" else (5, 4)  # the planted entry; Conv1D stores [in, out]
    assert top["block"] == 1 and top["value"] == pytest.approx(400.0) and tuple(top["index"]) == (row, column)


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_run_reports_rows_best_and_sensitivity(family, tmp_path):
    loaded = planted(family)
    inputs = QuantInputs(windows=windows(3, seed=1), calibration=windows(2, seed=2), corpus="planted", seed=1)
    config = QuantConfig(
        schemes=("W8", "A8", "A8-static", "KV4"),
        strategies=("none", "outlier-tokens", "best"),
        sensitivity="A8",
        progress=False,
    )
    result = run(loaded, inputs, config)
    data = json.loads(json.dumps(result.to_json()))
    assert [(r["scheme"], r["strategy"]) for r in data["rows"]] == [
        (s, t) for s in ("W8", "A8", "A8-static", "KV4") for t in ("none", "outlier-tokens", "best")
    ]
    tokens = 3 * 23
    assert data["baseline"]["tokens"] == tokens and all(r["tokens"] == tokens for r in data["rows"])
    for row in data["rows"]:
        assert row["ratio"] == pytest.approx(row["perplexity"] / data["baseline"]["perplexity"])
    for scheme, choice in data["best"].items():
        tried = choice["calibration_perplexity"]
        assert choice["chosen"] == min(tried, key=tried.get)
        best_row = next(r for r in data["rows"] if r["scheme"] == scheme and r["strategy"] == "best")
        assert best_row["chosen"] == choice["chosen"]
    sensitivity = data["sensitivity"]
    assert [r["block"] for r in sensitivity["blocks"]] == [0, 1, 2, 3] and sensitivity["massive_blocks"][0] == 1
    assert data["outlier_tokens"]["first_positions"] == 1 and data["prefix_tokens"] == []
    result.write(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "quant.json",
        "report.md",
        "report.html",
        "perplexity.png",
        "sensitivity.png",
    }
    assert "| A8 | dynamic per-tensor | outlier-tokens |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_run_rows_equal_the_schemes_written_out_in_plain_torch(family):
    """Each row against the model rounded by hand (`quantized_by_hand`) and a cross-entropy over the same windows
    (3 windows: one batch, so one per-tensor scale spans them all); outlier-tokens keeps the first position."""
    loaded = planted(family)
    inputs = QuantInputs(windows=windows(3, seed=1), calibration=windows(2, seed=2))
    schemes = ("W8", "A8", "W8A8") + (("KV4",) if family == "llama" else ())  # GPT-2's c_attn fuses q, k and v
    config = QuantConfig(schemes=schemes, strategies=("none", "outlier-tokens"), sensitivity=None, progress=False)
    data = run(loaded, inputs, config).to_json()
    assert data["outlier_tokens"]["first_positions"] == 1
    model, baseline = loaded.model, data["baseline"]["perplexity"]
    assert baseline == pytest.approx(perplexity_by_hand(model, inputs.windows), rel=2e-6)
    bits = {"W8": (8, None, None), "A8": (None, 8, None), "W8A8": (8, 8, None), "KV4": (None, None, 4)}
    for row in data["rows"]:
        keep = int(row["strategy"] == "outlier-tokens" and row["scheme"] != "W8")  # weights keep no token
        with quantized_by_hand(model, *bits[row["scheme"]], head_dim=8, keep_first=keep):
            expected = perplexity_by_hand(model, inputs.windows)
        assert row["perplexity"] == pytest.approx(expected, rel=2e-6), (row["scheme"], row["strategy"])
        assert abs(expected / baseline - 1) > 1e-5, row["scheme"]  # the rounding shows at that tolerance


def test_static_scales_need_calibration_and_the_best_is_not_a_context():
    loaded = planted("llama")
    with pytest.raises(MassactError, match="static scales"), quant_context(loaded, parse_scheme("W8A8-static")):
        pass
    with pytest.raises(MassactError, match="best"), quant_context(loaded, parse_scheme("W8A8"), "best"):
        pass
    with pytest.raises(MassactError, match="calibration"), quant_context(loaded, parse_scheme("W8A8"), "smooth"):
        pass


@pytest.mark.parametrize(("family", "bos"), [("llama", True), ("gpt2", False), ("qwen2", True)])
def test_inputs_are_the_corpus_windows_plus_held_out_calibration(family, bos, tmp_path):
    from massact.data.corpus import load_windows

    corpus = tmp_path / "words.txt"
    words = torch.randint(10, VOCAB, (800,), generator=torch.Generator().manual_seed(3))
    corpus.write_text(" ".join(f"w{int(i)}" for i in words), encoding="utf-8")
    model = tiny_model(family)
    plant_massive(model, block=1, dim=4)
    loaded = LoadedModel(model=model, tokenizer=word_tokenizer(lambda i: f"w{i}", bos), name=family)
    inputs = load_inputs(loaded, str(corpus), samples=3, seq_len=16, calib_samples=2, seed=4)
    assert torch.equal(inputs.windows, load_windows(loaded.tokenizer, str(corpus), 3, 16, seed=4))
    assert inputs.calibration.shape == (2, 16)
    assert not any(torch.equal(c, w) for c in inputs.calibration for w in inputs.windows)  # held out
    assert inputs.prefix_tokens == ([f"w{MARK}"] if bos else [])
    config = QuantConfig(schemes=("A8",), strategies=("none", "outlier-tokens"), sensitivity=None, progress=False)
    data = run(loaded, inputs, config).to_json()
    assert data["prefix_tokens"] == inputs.prefix_tokens
    assert data["baseline"]["tokens"] == 3 * (16 - 1)  # the BOS is never a target
    # the BOS carries the planted activation, so it is the outlier token; without a BOS there is none
    assert data["outlier_tokens"]["first_positions"] == int(bos)
    if not bos:
        assert data["rows"][0]["perplexity"] == data["rows"][1]["perplexity"]


# ---- command -----------------------------------------------------------------------------------------------


def test_cli_rejects_bad_input_before_loading(capsys, tmp_path):
    for argv, message in (
        (["quant", "no-such-model", "--schemes", "W8Q"], "scheme 'W8Q' is not known"),
        (["quant", "no-such-model", "--strategies", "smooth+rotate"], "alternatives"),
        (["quant", "no-such-model", "--alpha", "2"], "--alpha"),
        (["quant", "no-such-model", "--calib-samples", "0"], "--calib-samples 0: must be at least 1"),
        (["quant", "no-such-model", "--seq-len", "1"], "--seq-len 1: must be at least 2"),
    ):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and message in err and "Traceback" not in err and out == ""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["quant", "no-such-model", "--out", str(blocker)], capsys)
    assert code == 2 and "massact: error:" in err


@pytest.mark.slow
def test_cli_quant_writes_json_report_and_figures(tmp_path, capsys, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["quant", str(tiny_model_dir), "--corpus", str(corpus), "--samples", "2", "--seq-len", "16"]
    argv += ["--calib-samples", "1", "--schemes", "W8A8,KV4", "--strategies", "none,smooth", "--device", "cpu"]
    code, stdout, _ = run_cli([*argv, "--sensitivity-samples", "1", "--json", "--out", str(out)], capsys)
    assert code in (0, None)
    data = json.loads(stdout)
    assert data == json.loads((out / "quant.json").read_text())
    assert [(r["scheme"], r["strategy"]) for r in data["rows"]] == [
        ("W8A8", "none"),
        ("W8A8", "smooth"),
        ("KV4", "none"),
        ("KV4", "smooth"),
    ]
    assert data["baseline"]["tokens"] == 2 * 15 and data["prefix_tokens"] == []
    # the values: the saved model on the windows the command draws (seed 0), rounded and scored in plain torch
    from massact.data.corpus import load_windows
    from massact.models.loading import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu")
    drawn = load_windows(loaded.tokenizer, str(corpus), 2, 16, seed=0)
    assert data["baseline"]["perplexity"] == pytest.approx(perplexity_by_hand(loaded.model, drawn), rel=2e-6)
    for row, bits in ((data["rows"][0], (8, 8)), (data["rows"][2], (None, None, 4))):
        with quantized_by_hand(loaded.model, *bits):
            assert row["perplexity"] == pytest.approx(perplexity_by_hand(loaded.model, drawn), rel=2e-6), row
    assert len(data["sensitivity"]["blocks"]) == 2
    files = {p.name for p in out.iterdir()}
    assert {"quant.json", "report.md", "perplexity.png", "sensitivity.png"} <= files
    code, stdout, _ = run_cli(argv[:-2] + ["--sensitivity", "none"], capsys)  # the table, at a width that fits
    assert code in (0, None) and "W8A8" in stdout and "unquantized" in stdout
