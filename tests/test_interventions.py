"""Intervention hooks on a tiny LLaMA whose massive activation is planted as an attention sink.

The plant: token id MARK carries 3000 in dim DIM from its embedding on (so from block 0 on, wherever it
stands), and in blocks 1-3 every query is wired to attend to a key that has DIM large (a query bias
and one key-weight column), so the model leans on it the way real models lean on their sink token.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from massact.detect import Thresholds
from massact.errors import MassactError
from massact.interventions import InterventionConfig, parse_modes, resolve_blocks, run
from massact.interventions.hooks import intervene
from massact.interventions.means import SiteMeans, read_means
from massact.interventions.sites import SiteSpec
from massact.interventions.survey import survey
from massact.models.loading import load_model
from massact.models.structure import find_structure
from massact.perplexity import evaluate_perplexity
from massact.tokens import KINDS, TokenKinds

H, VOCAB, MARK, DIM, VALUE = 64, 96, 0, 7, 3000.0


def sink_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=H,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        initializer_range=0.2,
        attention_bias=True,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[MARK, DIM] = VALUE
        for layer in model.model.layers[1:]:
            attn = layer.self_attn
            attn.q_proj.bias.fill_(3.0)
            attn.k_proj.bias.zero_()
            attn.k_proj.weight[:, DIM] = 3.0
            attn.v_proj.weight[:, DIM] *= 3.0
    return model


def windows(n: int = 6, length: int = 32, positions: list[int] | None = None, seed: int = 1) -> torch.Tensor:
    """Random ids without MARK, then MARK at `positions[i]` of window i (default: position 0)."""
    ids = torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
    ids[torch.arange(n), torch.tensor(positions or [0] * n)] = MARK
    return ids


@pytest.fixture(scope="module")
def model():
    return sink_model()


@pytest.fixture(scope="module")
def structure(model):
    return find_structure(model)


def nll(model, ids) -> float:
    return evaluate_perplexity(model, ids, batch_size=4, progress=False).nll


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_detector_finds_the_planted_site_wherever_it_is(model, structure):
    positions = [0, 5, 17, 30]
    ids = windows(4, positions=positions)
    found = []

    def grab(module, args, output):
        found.append(SiteSpec().detect(output.unsqueeze(0) if output.dim() == 2 else output))

    handle = structure.blocks[0].register_forward_hook(grab)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    expected = torch.zeros(4, 32, H, dtype=torch.bool)
    expected[torch.arange(4), torch.tensor(positions), DIM] = True
    assert torch.equal(found[0], expected)


def test_zero_mean_random_on_the_planted_sink(model, structure):
    ids = windows(8)
    before = state(model)
    base = nll(model, ids)
    found = survey(model, structure, windows(8, seed=2), SiteSpec(), TokenKinds(), progress=False)
    assert found.first_block == 0
    results = {}
    for mode in ("zero", "mean", "random"):
        with intervene(model, structure, SiteSpec(), mode, [0], means=found.means, seed=3) as hooks:
            results[mode] = nll(model, ids)
        assert hooks.counts.sites == {0: 8}  # one massive site per window
    zero, mean, random = (abs(results[m] - base) for m in ("zero", "mean", "random"))
    assert zero > 0.2  # nats per token: the model leans on the sink
    assert mean < 1e-5  # the sink's value does not depend on the input: its mean is the value
    assert random < 0.01 and random * 50 < zero
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert nll(model, ids) == base


def test_zero_sets_exactly_the_selected_sites_and_random_zeroes_as_many_others(model, structure):
    ids = windows(3, positions=[0, 9, 20])
    seen = {}

    def grab(name):
        def hook(module, args, output):
            seen[name] = output.detach().clone()

        return hook

    outputs = {}
    for mode in ("original", "zero", "random"):
        with intervene(model, structure, SiteSpec(), mode, [0], seed=5):
            handle = structure.blocks[0].register_forward_hook(grab(mode))  # runs after the intervention hook
            try:
                with torch.no_grad():
                    model(input_ids=ids)
            finally:
                handle.remove()
        outputs[mode] = seen[mode]
    original, zero, random = outputs["original"], outputs["zero"], outputs["random"]
    changed = zero != original
    assert changed.sum() == 3 and torch.equal(changed.nonzero()[:, 1], torch.tensor([0, 9, 20]))
    assert (changed.nonzero()[:, 2] == DIM).all() and (zero[changed] == 0).all()
    moved = random != original
    assert moved.sum() == 3 and (random[moved] == 0).all()
    assert not moved[torch.arange(3), torch.tensor([0, 9, 20]), DIM].any()  # the massive sites are left alone
    assert moved.sum(dim=(1, 2)).tolist() == [1, 1, 1]  # as many per sequence as that sequence has


def test_random_control_is_seeded(model, structure):
    ids = windows(4)
    runs = []
    for seed in (11, 11, 12):
        with intervene(model, structure, SiteSpec(), "random", [0], seed=seed):
            runs.append(nll(model, ids))
    assert runs[0] == runs[1] != runs[2]


def test_user_sites_and_every_block_from_l(model, structure):
    ids = windows(2, positions=[0, 0])
    fixed = SiteSpec(dims=(DIM, 3), tokens=(0, 4))
    with intervene(model, structure, fixed, "zero", resolve_blocks("1-", 4, None)) as hooks:
        nll(model, ids)
    assert hooks.counts.sites == {1: 8, 2: 8, 3: 8}  # 2 windows x 2 tokens x 2 dims, at each of blocks 1-3
    only_dim = SiteSpec(dims=(3,))  # a dim with nothing massive in it: the detector selects nothing
    base = nll(model, ids)
    with intervene(model, structure, only_dim, "zero", [0]) as hooks:
        assert nll(model, ids) == base
    assert hooks.counts.total == 0


def test_mean_uses_the_token_kind_and_falls_back_to_the_pooled_mean(model, structure):
    means = SiteMeans(H, 4, {(0, DIM, "first"): (100.0, 5), (0, DIM, "other"): (300.0, 5)})
    ids = windows(2, positions=[0, 6])
    captured = {}
    with intervene(model, structure, SiteSpec(), "mean", [0], means=means):
        handle = structure.blocks[0].register_forward_hook(lambda m, a, o: captured.update(x=o.clone()))
        try:
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            handle.remove()
    assert captured["x"][0, 0, DIM] == 100.0 and captured["x"][1, 6, DIM] == 300.0
    pooled_only = SiteMeans(H, 4, {(0, DIM, "delimiter"): (10.0, 1), (0, DIM, "special"): (40.0, 3)})
    with intervene(model, structure, SiteSpec(), "mean", [0], means=pooled_only):
        handle = structure.blocks[0].register_forward_hook(lambda m, a, o: captured.update(x=o.clone()))
        try:
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            handle.remove()
    assert captured["x"][0, 0, DIM] == pytest.approx(32.5)  # (10 * 1 + 40 * 3) / 4


def test_token_kinds_from_a_tokenizer(smollm2_tokenizer):
    kinds = TokenKinds.from_tokenizer(smollm2_tokenizer)
    ids = smollm2_tokenizer("Hello. World and\n", return_tensors="pt", add_special_tokens=False)["input_ids"]
    codes = kinds.codes(ids, *ids.shape)[0].tolist()
    assert [KINDS[c] for c in codes][:2] == ["first", "delimiter"]
    assert KINDS[codes[-1]] == "delimiter" and KINDS[codes[2]] == "other"


def test_bad_inputs_are_clear_errors(model, structure, tmp_path):
    with pytest.raises(MassactError, match="out of range"), intervene(model, structure, SiteSpec(), "zero", [4]):
        pass
    with pytest.raises(MassactError, match="unknown mode"), intervene(model, structure, SiteSpec(), "scale", [0]):
        pass
    with pytest.raises(MassactError, match="unknown mode"):
        parse_modes("original,zeros")
    with pytest.raises(MassactError, match="out of range"):
        resolve_blocks("9-", 4, 0)
    with pytest.raises(MassactError, match="needs `means`"), intervene(model, structure, SiteSpec(), "mean", [0]):
        pass
    path = tmp_path / "means.json"
    site = {"block": 0, "dim": DIM, "token_kind": "first", "mean": 1.0, "std": 0.0, "count": 3}
    for data, message in [
        ({"model": "x", "hidden_size": 576, "num_blocks": 4, "sites": [site]}, "hidden size 576"),
        ({"model": "x", "hidden_size": H, "num_blocks": 30, "sites": [site]}, "for 30 blocks"),
        ({"model": "x", "hidden_size": H, "num_blocks": 4, "sites": [{**site, "dim": 507}]}, "outside this model"),
        ({"model": "x", "hidden_size": H, "num_blocks": 4, "sites": [{**site, "block": 2}]}, "no means for block"),
    ]:
        path.write_text(json.dumps(data))
        with pytest.raises(MassactError, match=message):
            read_means(path).check(H, 4, [0])
    path.write_text("{not json")
    with pytest.raises(MassactError, match="not a JSON"):
        read_means(path)


def test_run_table_and_block_map(model):
    loaded = load_model(model)
    data = windows(10, seed=4)
    config = InterventionConfig(
        corpora=["a", "b"], samples=6, seq_len=32, means_samples=4, progress=False, batch_size=4
    )
    result = run(loaded, {"a": data, "b": data}, config)  # "a" also gives the held-out windows of the means
    assert result.blocks == [0]
    assert [(r["corpus"], r["mode"]) for r in result.rows] == [
        (c, m) for c in ("a", "b") for m in ("original", "zero", "mean", "random")
    ]
    ppl = {r["mode"]: r["perplexity"] for r in result.rows if r["corpus"] == "a"}
    assert abs(math.log(ppl["zero"] / ppl["original"])) > 0.2  # a random model: either way, but far
    assert ppl["mean"] == pytest.approx(ppl["original"], rel=1e-5)
    assert result.survey.dim_spans()[0]["dim"] == DIM and result.survey.dim_spans()[0]["blocks"][0] == 0
    assert all(r["tokens"] == 6 * 31 for r in result.rows)
    with pytest.raises(MassactError, match="out of range"):
        run(loaded, {"a": data}, InterventionConfig(corpora=["a"], seq_len=32, block="7", progress=False))


def test_thresholds_select_what_the_detector_selects():
    hidden = torch.ones(1, 4, 8)
    hidden[0, 2, 5] = 1500.0  # median 1: the cutoff is max(100, 1000 x 1)
    hidden[0, 1, 1] = 900.0
    assert SiteSpec().detect(hidden).nonzero().tolist() == [[0, 2, 5]]
    assert SiteSpec(thresholds=Thresholds(abs=50, ratio=50)).detect(hidden).sum() == 2
    assert SiteSpec(tokens=(1,)).detect(hidden).sum() == 0


def test_block_ranges_read_as_words():
    from massact.interventions.phrasing import blocks_phrase

    assert blocks_phrase([28]) == "block 28"
    assert blocks_phrase([13, 11, 12]) == "blocks 11-13"
    assert blocks_phrase([3, 5, 6, 7]) == "blocks 3,5-7"
