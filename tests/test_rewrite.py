"""`massact rewrite`: exact rewrites of planted tiny models, checked by reloading the saved folder
with plain `from_pretrained` and comparing its float32 logits with the original's."""

from __future__ import annotations

import copy
import json
import os
import shlex

import pytest
import torch
import transformers as tf
from cli_runner import run as run_cli
from planting import (
    FP16_MAX,
    MARK,
    VOCAB,
    down_rows,
    mixtral,
    planted_for_rewrite,
    rewrite_inputs,
    tiny_model,
    w_word,
    word_tokenizer,
)

from massact import rotations
from massact.errors import MassactError
from massact.models.loading import load_model
from massact.models.structure import find_structure
from massact.quant import QuantInputs
from massact.residual import suggest
from massact.residual.layout import find_layout
from massact.residual.support import refusals
from massact.rewrite import RewriteConfig, run


def _logits(model: torch.nn.Module, ids: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    with torch.inference_mode():
        return model.to(dtype)(input_ids=ids).logits.float()


FAMILIES = ["gemma3", "llama", "llama-tied", "qwen2", "gpt2", "mixtral"]


@pytest.mark.parametrize("family", FAMILIES)
def test_rescale_makes_float16_finite_and_reloads_with_plain_from_pretrained(family, tmp_path):
    model = planted_for_rewrite(family)
    bos = family != "gpt2"
    inputs = rewrite_inputs(bos)
    original = _logits(model, inputs.windows)
    before_half = _logits(planted_for_rewrite(family), inputs.windows, torch.float16)
    assert not torch.isfinite(before_half).all(), "the plant must overflow float16"
    loaded = load_model(model, tokenizer=word_tokenizer(w_word, bos=bos))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = run(loaded, inputs, RewriteConfig(rescale="auto", progress=False))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "the original must not change"
    result.write(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    after = _logits(reloaded, inputs.windows)
    assert (after - original).abs().max() <= 1e-5 * original.abs().max()
    assert torch.isfinite(_logits(reloaded, inputs.windows, torch.float16)).all()
    if family in ("gemma3", "llama-tied", "gpt2"):  # the tie is kept: the final norm absorbs the factor
        assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    data = result.to_json()
    assert data["before"]["nonfinite_modules_float16"] > 0 and data["after"]["nonfinite_modules_float16"] == 0
    assert data["before"]["peak"] > FP16_MAX > data["after"]["peak"]
    factor = data["rewrites"][0]["factor"]
    assert factor < 1 and data["after"]["peak"] == pytest.approx(factor * data["before"]["peak"], rel=1e-4)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(data["model_files"])
    assert (tmp_path / "rewrite.json").exists() and (tmp_path / "report.md").exists()


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_rescale_shrinks_the_mlp_hidden_product_too(family):
    """The input of the MLP's down projection (where super weights act) is scaled with the write: the up
    projection is scaled in place of the writer, for a dense gated MLP and for fused experts alike."""
    model = planted_for_rewrite(family)
    loaded = load_model(model, tokenizer=word_tokenizer(w_word, bos=True))
    inputs = rewrite_inputs(True)
    result = run(loaded, inputs, RewriteConfig(rescale=0.25, progress=False))
    rewritten = tf.AutoModelForCausalLM.from_pretrained(result.folder.name, dtype=torch.float32).eval()

    def down_inputs(m: torch.nn.Module) -> torch.Tensor:
        """The largest |input| of every down projection (fused experts: the hidden product, by hand)."""
        largest = []
        for block in find_structure(m).blocks:
            mlp = block.mlp
            if hasattr(mlp, "down_proj"):
                seen = []
                down = mlp.down_proj
                handle = down.register_forward_pre_hook(lambda mod, args, to=seen: to.append(args[0].abs().max()))
                with torch.no_grad():
                    m(input_ids=inputs.windows)
                handle.remove()
                largest.append(max(seen))
            else:  # fused experts: act(gate) x up of every expert on every token's normed input
                normed = []
                handle = mlp.register_forward_pre_hook(lambda mod, args, to=normed: to.append(args[0]))
                with torch.no_grad():
                    m(input_ids=inputs.windows)
                handle.remove()
                x = normed[0].reshape(-1, normed[0].shape[-1])
                experts = mlp.experts
                gate_up = torch.einsum("th,eoh->eto", x, experts.gate_up_proj)
                gate, up = gate_up.chunk(2, dim=-1)
                largest.append((experts.act_fn(gate) * up).abs().max())
        return torch.stack(largest)

    before, after = down_inputs(model), down_inputs(rewritten)
    torch.testing.assert_close(after, 0.25 * before, rtol=1e-4, atol=1e-6)
    if family == "mixtral":
        inter = down_rows(find_structure(model).mlp(1).experts).shape[-1]
        original = find_structure(model).mlp(1).experts.gate_up_proj
        new = find_structure(rewritten).mlp(1).experts.gate_up_proj
        torch.testing.assert_close(new[:, :inter], original[:, :inter])  # the gates are untouched
        torch.testing.assert_close(new[:, inter:], 0.25 * original[:, inter:])


def _fused_experts_model(family: str, square: bool) -> torch.nn.Module:
    """A tiny GPT-OSS (experts stored [expert, in, out], biases, gate/up interleaved and clamped) or Mixtral
    ([expert, out, in]), with random biases and norm gains so that every one of them matters; `square`: the
    intermediate size equals the hidden size, so every expert axis has the hidden size."""
    torch.manual_seed(0)
    model = tiny_model("gpt_oss") if family == "gpt_oss" else mixtral()
    if square:
        model.config.intermediate_size = model.config.hidden_size
        torch.manual_seed(0)
        model = type(model)(model.config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("square", [False, True])
@pytest.mark.parametrize("family", ["gpt_oss", "mixtral"])
def test_fused_experts_are_placed_however_they_are_stored(family, square):
    """The layout places each fused expert parameter on the experts' recorded call, as transformers multiplies it
    (`is_transposed`), even where shapes cannot tell (intermediate size = hidden size); rotate, smooth and rescale
    then keep the float32 logits. A rescale scales Mixtral's up half (the hidden product shrinks with the write)
    but GPT-OSS's down projection and its bias: its (up + 1) * glu does not scale with up."""
    model = _fused_experts_model(family, square)
    inputs = rewrite_inputs(False)
    loaded = load_model(model, tokenizer=word_tokenizer(w_word, bos=False))
    assert set(refusals(loaded, inputs.calibration).values()) == {None}
    mlp = next(sub for sub in find_layout(model, inputs.calibration[:1]).sublayers if sub.kind == "mlp")
    experts = find_structure(model).mlp(mlp.block).experts
    into, out = (1, 2) if experts.is_transposed else (2, 1)  # the hidden axis of gate_up's input, down's output
    prefix = f"{mlp.path}.experts."

    def placed(sites: list) -> dict:
        return {s.path.removeprefix(prefix): (s.axis, s.index) for s in sites if s.path.startswith(prefix)}

    bias = {"down_proj_bias": (1, ())} if family == "gpt_oss" else {}
    assert placed(mlp.writers) == {"down_proj": (out, ()), **bias}
    assert placed(mlp.readers) == {"gate_up_proj": (into, ())}
    if family == "gpt_oss":
        assert placed(mlp.scaled) == placed(mlp.writers)
    else:  # the second half of the gate_up rows: the up projection
        up = (slice(None), slice(model.config.intermediate_size, None))
        assert placed(mlp.scaled) == {"gate_up_proj": (into, up)}
    for rewrite in ({"rotate": True}, {"smooth": 0.5}, {"rescale": 0.25}):
        data = run(loaded, inputs, RewriteConfig(**rewrite, progress=False)).to_json()
        assert data["logits_float32"]["max_rel_diff"] <= 1e-5, rewrite
        assert data["after"]["perplexity_float32"] == pytest.approx(data["before"]["perplexity_float32"], rel=1e-5)


def test_fused_experts_the_probe_cannot_place_are_refused_before_any_work():
    """An experts module that bends its input before reading it (tanh): no axis reads the stream as a Linear
    does, so `refusals` and the rewrite both say so up front."""
    model = _fused_experts_model("gpt_oss", square=False)
    experts = find_structure(model).mlp(2).experts
    forward = experts.forward
    experts.forward = lambda hidden, *args, **kwargs: forward(torch.tanh(hidden), *args, **kwargs)
    inputs = rewrite_inputs(False)
    loaded = load_model(model, tokenizer=word_tokenizer(w_word, bos=False))
    reason = "model.layers.2.mlp.experts.gate_up_proj has an axis of the hidden size but neither reads nor writes"
    assert all(reason in refusals(loaded, inputs.calibration)[kind] for kind in ("rescale", "smooth", "rotate"))
    with pytest.raises(MassactError, match=reason):
        run(loaded, inputs, RewriteConfig(rotate=True, progress=False))


def test_command_writes_a_model_folder_and_refuses_a_folder_holding_another_model(tmp_path, capsys, monkeypatch):
    model = planted_for_rewrite("qwen2")
    saved = tmp_path / "model"
    model.save_pretrained(saved)
    word_tokenizer(w_word, bos=False).save_pretrained(saved)
    corpus = tmp_path / "corpus.txt"
    words = torch.randint(10, VOCAB, (3000,), generator=torch.Generator().manual_seed(1))
    corpus.write_text(" ".join(w_word(int(i)) for i in words) + f" {w_word(MARK)}" * 50)
    out = tmp_path / "out"
    argv = ["rewrite", str(saved), "--rescale", "auto", "--corpus", str(corpus), "--seq-len", "32", "--out", str(out)]
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "rewrite.json", "report.md", "report.html"} <= names
    data = json.loads((out / "rewrite.json").read_text())
    assert data["logits_float32"]["max_rel_diff"] <= 1e-5
    code, _, _ = run_cli(argv, capsys)  # a folder the last rewrite wrote may be rewritten
    assert code == 0
    code, stdout, stderr = run_cli([*argv[:-1], str(saved)], capsys)  # the input model's own folder: refused
    assert code == 2 and "holds another model" in stderr and stdout == ""
    hint = suggest.for_headroom(str(saved), peak_over_max=9.0, overflows=True)  # what quant / atlas print
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli([*shlex.split(hint)[1:], "--corpus", str(corpus), "--seq-len", "32"], capsys)
    assert code == 0, stderr
    assert json.loads((tmp_path / "model-rescaled" / "rewrite.json").read_text())["rewrites"][0]["kind"] == "rescale"


def test_suggestions_name_the_rewrite_that_folds_the_finding():
    assert suggest.for_strategies(suggest.BUNDLED_NAME, ["outlier-tokens+rotate"], 0.5).startswith(
        "massact rewrite default --rotate --check-quant w8a8 --out"
    )
    assert "--smooth 0.8" in suggest.for_strategies("org/model x", ["smooth"], 0.8)
    assert suggest.for_strategies("m", ["outlier-tokens", "none"], 0.5) is None
    assert suggest.for_headroom("m", peak_over_max=0.35, overflows=False) is None  # SmolLM2: 23,147 / 65,504
    assert "--rescale auto" in suggest.for_headroom("m", peak_over_max=0.6, overflows=False)


def _hidden_peaks(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Largest |h| of each block's output but the last (transformers gives that one after the final norm)."""
    with torch.inference_mode():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states[1:-1]
    return torch.stack([h.abs().amax() for h in states])


@pytest.mark.parametrize("family", ["llama-tied", "qwen2-tied"])
def test_rotate_spreads_the_massive_channel_and_keeps_the_logits(family, tmp_path, monkeypatch):
    import planting

    monkeypatch.setattr(planting, "H", 256)  # a wide enough stream: a one-hot spreads to 1/16 of itself
    model = planted_for_rewrite(family)
    inputs = rewrite_inputs(bos=True)
    original = _logits(model, inputs.windows)
    result = run(load_model(model, tokenizer=word_tokenizer(w_word, bos=True)), inputs, RewriteConfig(rotate=True))
    result.write(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert (_logits(reloaded, inputs.windows) - original).abs().max() <= 1e-5 * original.abs().max()
    before, after = _hidden_peaks(model, inputs.windows), _hidden_peaks(reloaded, inputs.windows)
    massive = before > 1000.0
    assert massive[1:].all() and not massive[0]
    assert (after[massive] * 10 <= before[massive]).all(), (before, after)
    assert reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight


@pytest.mark.parametrize(("family", "norm", "readers"), [
    ("llama", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("gemma3", "pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("gpt2", "ln_1", ("attn.c_attn",)),
])  # fmt: skip
def test_smooth_balances_activation_and_weight_maxima_exactly(family, norm, readers, tmp_path):
    model = planted_for_rewrite(family)
    bos = family != "gpt2"
    inputs = rewrite_inputs(bos)
    original = _logits(model, inputs.windows)
    run(load_model(model, tokenizer=word_tokenizer(w_word, bos=bos)), inputs, RewriteConfig(smooth=0.5)).write(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    # a (1 + w) gain divided by a large scale is stored as w close to -1: float32 keeps ~1e-4 of 1 + w there
    tolerance = 1e-3 if family == "gemma3" else 1e-5
    assert (_logits(reloaded, inputs.windows) - original).abs().max() <= tolerance * original.abs().max()
    block = find_structure(reloaded).blocks[1]
    seen = []
    handle = block.get_submodule(norm).register_forward_hook(lambda m, a, out: seen.append(out.abs().amax((0, 1))))
    with torch.inference_mode():
        reloaded(input_ids=inputs.calibration)
    handle.remove()
    weights = [block.get_submodule(r).weight for r in readers]
    columns = torch.cat([w.T if family == "gpt2" else w for w in weights]).abs().amax(0)  # per input channel
    assert torch.allclose(seen[0], columns.detach(), rtol=1e-3), "alpha 0.5 makes both maxima sqrt(a * w)"


def _quanto_perplexity(model: torch.nn.Module, inputs: QuantInputs, activations: bool) -> float:
    """Perplexity of a copy of `model` quantized here with optimum-quanto itself, as its documentation shows:
    int8 weights and int8 activations calibrated on the calibration windows (one batch), or int4 weights only;
    the LM head left out."""
    from optimum import quanto

    quantized = copy.deepcopy(model)
    weights, acts = (quanto.qint8, quanto.qint8) if activations else (quanto.qint4, None)
    quanto.quantize(quantized, weights=weights, activations=acts, exclude=["lm_head"])
    with torch.no_grad():
        if activations:
            with quanto.Calibration():
                quantized(input_ids=inputs.calibration)
        quanto.freeze(quantized)
        logits = quantized(input_ids=inputs.windows).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), inputs.windows[:, 1:].reshape(-1))
    return float(nll.exp())


def test_check_quant_runs_the_real_library_beside_the_simulation():
    model = planted_for_rewrite("qwen2")
    original = copy.deepcopy(model)
    inputs = rewrite_inputs(bos=False)
    config = RewriteConfig(rescale=0.25, check_quant="w8a8", progress=False)
    quant = run(load_model(model, tokenizer=word_tokenizer(w_word, bos=False)), inputs, config).to_json()["check_quant"]
    fp32 = torch.nn.functional.cross_entropy(
        _logits(original, inputs.windows)[:, :-1].reshape(-1, VOCAB), inputs.windows[:, 1:].reshape(-1)
    )
    w8a8 = quant["schemes"]["W8A8"]
    # int8 with per-tensor and per-channel absmax scales is blind to a power-of-two factor: the same codes
    assert w8a8["real"]["original"] == pytest.approx(w8a8["real"]["rewritten"], rel=1e-6)
    # the numbers are optimum-quanto's: a copy quantized here with the library directly gives the same
    assert w8a8["real"]["original"] == pytest.approx(_quanto_perplexity(original, inputs, activations=True), rel=1e-5)
    assert w8a8["real"]["original"] != pytest.approx(float(fp32.exp()), rel=1e-4), "the library must quantize"
    assert w8a8["rewrite_helps"] is False
    assert set(w8a8["simulated"]) == {"original", "rewritten"} and w8a8["simulated_scheme"] == "W8A8-static"
    assert set(quant["schemes"]) == {"W8A8", "W4"}
    w4 = quant["schemes"]["W4"]["real"]["original"]
    assert w4 == pytest.approx(_quanto_perplexity(original, inputs, activations=False), rel=1e-5)
    assert w4 != pytest.approx(float(fp32.exp()), rel=1e-4)


def test_check_quant_without_a_compiler_is_one_clear_line_before_any_work(tmp_path, capsys, monkeypatch):
    from massact.rewrite import realquant

    def no_compiler(device):
        raise RuntimeError("Error building extension 'quanto_cpp'\nc++: not found")

    monkeypatch.setattr(realquant, "_unpack_probe", no_compiler)
    saved = tmp_path / "model"
    planted_for_rewrite("qwen2").save_pretrained(saved)
    word_tokenizer(w_word, bos=False).save_pretrained(saved)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(w_word(10 + i % 50) for i in range(3000)))
    out = tmp_path / "out"
    argv = ["rewrite", str(saved), "--rescale", "0.5", "--check-quant", "w8a8", "--corpus", str(corpus)]
    code, stdout, stderr = run_cli([*argv, "--seq-len", "32", "--out", str(out)], capsys)
    assert code == 2 and stdout == "" and not out.exists()
    message = stderr.strip().splitlines()[-1]
    assert "could not build its int4 kernel (Error building extension 'quanto_cpp')" in message
    assert "C++ compiler" in message and "saving and reloading" not in stderr  # failed before the rewrite ran


def test_the_kernel_loads_with_this_environments_scripts_first_and_path_comes_back(monkeypatch):
    import sysconfig

    from massact.rewrite import realquant

    seen = []
    monkeypatch.setattr(realquant, "_unpack_probe", lambda device: seen.append(os.environ.get("PATH")))
    monkeypatch.setenv("PATH", "/usr/bin")
    realquant.load_int4_kernel(torch.device("cpu"), lambda message: None)
    monkeypatch.delenv("PATH")
    realquant.load_int4_kernel(torch.device("cpu"), lambda message: None)
    scripts = sysconfig.get_path("scripts")
    assert seen == [f"{scripts}{os.pathsep}/usr/bin", scripts] and "PATH" not in os.environ


@pytest.mark.parametrize("size", [12, 256, 576, 768, 960])
def test_randomized_hadamard_is_orthogonal_and_flattest(size):
    matrix, kind = rotations.rotation(size, seed=3)
    assert kind == "randomized Hadamard"
    assert torch.allclose(matrix @ matrix.T, torch.eye(size, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(matrix.abs(), torch.full_like(matrix, size**-0.5))  # a one-hot spreads evenly
    assert rotations.rotation(size + 2)[1] == "seeded random orthogonal"  # no Hadamard order is 2 mod 4
