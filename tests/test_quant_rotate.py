"""quant's `rotate` is `massact rewrite --rotate`: the rewrite's own transform, then the scheme's rounding.

On planted tiny models (`rewrite_inputs`: 4 windows and 2 calibration windows of 24 ids, no BOS):
- unrounded (W32A32), the rotated model's perplexity is the original's: the rewrite is exact;
- rounded (W8A8, one batch of all 4 windows), it is the perplexity of the folder `massact.rewrite` writes,
  reloaded with plain `from_pretrained` and rounded by hand (`planting.quantized_by_hand`), computed directly;
- the model comes back bit for bit, its tied head tied again; block by block gives the same numbers;
- a model the rewrite refuses (or does not rotate exactly) is refused with the reason; `best` leaves rotations
  out there and says why.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from offload_models import differences
from planting import (
    perplexity_by_hand,
    planted_for_quant,
    planted_for_rewrite,
    quantized_by_hand,
    rewrite_inputs,
    w_word,
    word_tokenizer,
)

from massact.errors import MassactError
from massact.models.loading import LoadedModel, load_model
from massact.quant import QuantConfig, run
from massact.rewrite import RewriteConfig
from massact.rewrite import run as rewrite

FAMILIES = ["llama", "qwen2", "llama-tied"]  # q/k/v biases in Qwen2; a tied head the rotation unties


def loaded_family(family: str) -> LoadedModel:
    return load_model(planted_for_rewrite(family), tokenizer=word_tokenizer(w_word, bos=False))


def config(schemes: tuple[str, ...], strategies: tuple[str, ...], **kwargs) -> QuantConfig:
    return QuantConfig(schemes=schemes, strategies=strategies, sensitivity=None, batch_size=4, progress=False, **kwargs)


def perplexities(data: dict) -> dict[tuple[str, str], float]:
    return {(row["scheme"], row["strategy"]): row["perplexity"] for row in data["rows"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_unrounded_rotation_keeps_the_perplexity(family):
    data = run(loaded_family(family), rewrite_inputs(False), config(("W32A32",), ("none", "rotate"))).to_json()
    baseline = data["baseline"]["perplexity"]
    rows = perplexities(data)
    assert rows[("W32A32", "none")] == pytest.approx(baseline, rel=1e-6)
    assert rows[("W32A32", "rotate")] == pytest.approx(baseline, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_rounded_rotation_is_the_rewritten_model_rounded(family):
    loaded, inputs = loaded_family(family), rewrite_inputs(False)
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = run(loaded, inputs, config(("W8A8",), ("none", "rotate"), seed=3)).to_json()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if family.endswith("-tied"):
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # the independent pipeline: the rewrite's folder, plain transformers, rounding written out in torch
    folder = rewrite(loaded, inputs, RewriteConfig(rotate=True, seed=3, progress=False)).folder
    rewritten = tf.AutoModelForCausalLM.from_pretrained(folder.name, dtype=torch.float32).eval()
    with quantized_by_hand(rewritten, 8, 8):
        expected = perplexity_by_hand(rewritten, inputs.windows)
    rows = perplexities(data)
    assert rows[("W8A8", "rotate")] == pytest.approx(expected, rel=2e-6)
    assert abs(rows[("W8A8", "rotate")] / rows[("W8A8", "none")] - 1) > 5e-5  # 25 x the tolerance: it rotated


def test_model_comes_back_bit_for_bit_with_its_tie():
    loaded = loaded_family("llama-tied")
    model = loaded.model
    parameters = dict(model.named_parameters(remove_duplicate=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = rewrite_inputs(False)
    inputs.super_weights = []
    run(loaded, inputs, config(("W8A8-static", "W4A8-KV4"), ("outlier-tokens+rotate", "best"), best_samples=1))
    assert dict(model.named_parameters(remove_duplicate=False)).keys() == parameters.keys()
    assert all(p is parameters[k] for k, p in model.named_parameters(remove_duplicate=False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_block_by_block_rotates_a_tied_model_as_in_memory(tmp_path):
    planted_for_rewrite("llama-tied").save_pretrained(tmp_path)
    word_tokenizer(w_word, bos=False).save_pretrained(tmp_path)
    inputs = rewrite_inputs(False)
    settings = config(("W8A8", "W4A8-static"), ("none", "outlier-tokens+rotate"))
    results = {}
    for offload in ("none", "blocks"):
        loaded = load_model(str(tmp_path), device="cpu", offload=offload)
        results[offload] = run(loaded, inputs, settings).to_json()
    assert differences(results["none"], results["blocks"]) == []
    model = loaded.model
    assert loaded.offload.edits == {} and all(p.is_meta for p in model.parameters())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize(("family", "reason"), [("gpt2", "LayerNorm"), ("gemma3", "sandwich post-norms")])
def test_a_model_the_rewrite_refuses_is_refused_and_best_says_why(family, reason):
    loaded = planted_for_quant(family)
    inputs = rewrite_inputs(False)
    inputs.super_weights = []
    with pytest.raises(MassactError, match=f"outlier-tokens\\+rotate: .*{reason}"):
        run(loaded, inputs, config(("W8A8",), ("none", "outlier-tokens+rotate")))
    result = run(loaded, inputs, config(("W8A8",), ("best",), best_samples=1))
    best = result.to_json()["best"]["W8A8"]
    assert set(best["not_tried"]) == {"rotate", "outlier-tokens+rotate"}
    assert all(reason in why for why in best["not_tried"].values())
    assert "rotate" not in best["chosen"] and not any("rotate" in s for s in best["calibration_perplexity"])
    line = result.not_tried_line()
    assert line.startswith("best did not try rotate, outlier-tokens+rotate: ") and reason in line
    assert line in result.markdown().replace("\\", "")
