"""GPT-OSS (a learned sink logit per head, sliding and full attention, fused experts with biases, stored
transposed and interleaved) and Qwen3-Next (Gated DeltaNet linear attention in blocks 0-2, gated softmax
attention in block 3, fused experts plus a shared expert) through every analysis.

Each tiny model carries a planted massive activation whose writer is known exactly (`plant_expert`): the
router of block BLOCK sends the marked token to expert EXPERT, whose single fused down-projection entry
[EXPERT, DIM, UNIT] writes it. GPT-OSS's tokenizer adds nothing (the marked word sits inside the text);
Qwen3-Next's adds a BOS, which is its marked token.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from cli_runner import run as cli
from planting import VOCAB, number_tokenizer, perplexity_by_hand, plant_expert, quantized_by_hand, tiny_model

from massact.attention import AttentionConfig
from massact.attention import run as attention_run
from massact.corpus import CorpusConfig
from massact.corpus import run as corpus_run
from massact.errors import MassactError
from massact.interventions import InterventionConfig
from massact.interventions import run as intervene
from massact.models.loading import LoadedModel
from massact.models.structure import MoeParts, find_structure, is_linear
from massact.quant import QuantConfig
from massact.quant import run as quant_run
from massact.quant.run import load_inputs
from massact.scan import ScanConfig
from massact.scan import run as scan_run
from massact.stream import Policy, StreamConfig
from massact.stream import run as stream_run
from massact.stream.decode import decode_policy
from massact.stream.kvcache import cache_layers
from massact.trace import TraceConfig, TraceInputs
from massact.trace import run as trace_run

BLOCK, DIM, EXPERT, UNIT = 1, 11, 2, 5
WORD, BOS = 7, 63  # GPT-OSS's marked word; Qwen3-Next's BOS, its marked token


@dataclass
class Case:
    family: str
    loaded: LoadedModel
    mark: int
    prompt: str
    position: int  # of the marked token in the prompt's ids
    corpus: Path


def _corpus(folder: Path, mark: int, words: int = 1500) -> Path:
    ids = torch.randint(10, 60, (words,), generator=torch.Generator().manual_seed(0))
    ids[ids == WORD] = 10
    if mark == WORD:
        ids[::9] = WORD
    path = folder / "corpus.txt"
    path.write_text(" ".join(str(int(i)) for i in ids), encoding="utf-8")
    return path


def _build(family: str, folder: Path) -> Case:
    mark = BOS if family == "qwen3_next" else WORD
    model = tiny_model(family)
    plant_expert(model, block=BLOCK, dim=DIM, mark=mark, expert=EXPERT, unit=UNIT)
    tokenizer = number_tokenizer(VOCAB, bos=BOS if mark == BOS else None)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, name=f"tiny-{family}")
    prompt = "12 30 41 9 22" if mark == BOS else f"12 30 {WORD} 41 9 22"
    position = 0 if mark == BOS else 2
    return Case(family, loaded, mark, prompt, position, _corpus(folder, mark))


@pytest.fixture(scope="module", params=["gpt_oss", "qwen3_next"])
def case(request, tmp_path_factory) -> Case:
    return _build(request.param, tmp_path_factory.mktemp(request.param))


def test_structure_finds_blocks_token_mixers_and_fused_experts():
    gpt_oss, qwen3_next = find_structure(tiny_model("gpt_oss")), find_structure(tiny_model("qwen3_next"))
    assert gpt_oss.attn_names == ["self_attn"] * 4
    assert qwen3_next.attn_names == ["linear_attn"] * 3 + ["self_attn"]
    for structure, router, shared in ((gpt_oss, "router", ()), (qwen3_next, "gate", ("shared_expert",))):
        for i in range(4):
            moe = structure.moe(i)
            assert moe == MoeParts(experts="experts", num_experts=4, fused=True, router=router, shared=shared)


def test_scan_finds_the_planted_site(case):
    (site,) = scan_run(case.loaded, case.prompt, ScanConfig()).to_json()["summary"]["sites"]
    assert (site["token"], site["dim"], site["first_block"], site["last_block"]) == (case.position, DIM, BLOCK, 3)


def test_corpus_finds_the_planted_site_in_every_window(case):
    data = corpus_run(case.loaded, str(case.corpus), CorpusConfig(samples=4, seq_len=32, progress=False)).to_json()
    assert data["fraction_with_massive"] == [0.0, 1.0, 1.0, 1.0]
    (group,) = data["groups"]
    assert (group["dim"], group["emerge_block"], group["tokens"]) == (DIM, BLOCK, [str(case.mark)])


def test_intervene_mean_keeps_and_zero_removes_the_planted_site(case):
    texts = {"corpus": [case.corpus.read_text()]}
    config = InterventionConfig(
        corpora=("corpus",), samples=4, seq_len=32, block=f"{BLOCK}-", means_samples=4, progress=False
    )
    rows = {row["mode"]: row for row in intervene(case.loaded, texts, config).to_json()["rows"]}
    assert rows["zero"]["sites_by_block"][str(BLOCK)] >= 4  # every window holds the planted site
    assert rows["zero"]["sites_by_block"][str(BLOCK + 1)] == 0  # zeroed at its first block, it never comes back
    # the planted value is the same on every marked token, so its mean puts back what was there
    assert rows["mean"]["perplexity"] == pytest.approx(rows["original"]["perplexity"], rel=1e-4)
    assert rows["zero"]["perplexity"] != pytest.approx(rows["original"]["perplexity"], rel=1e-4)


def test_trace_names_the_planted_expert_and_its_fused_entry(case):
    config = TraceConfig(samples=2, seq_len=32, corpus="corpus", progress=False)
    result = trace_run(case.loaded, TraceInputs(case.prompt, [case.corpus.read_text()]), config)
    data = result.to_json()
    (site,) = data["sites"]
    assert (site["token"], site["dim"], site["block"]) == (case.position, DIM, BLOCK)
    assert (site["writer"], site["expert"], site["module"]) == ("expert", EXPERT, f"model.layers.{BLOCK}.mlp.experts")
    top = site["entries"][0]
    transposed = case.family == "gpt_oss"  # GPT-OSS stores down_proj as [expert, in, out]
    stored = [EXPERT, UNIT, DIM] if transposed else [EXPERT, DIM, UNIT]
    assert (top["parameter"], top["expert"], top["row"], top["column"]) == (
        f"model.layers.{BLOCK}.mlp.experts.down_proj",
        EXPERT,
        DIM,
        UNIT,
    )
    assert top["stored_index"] == stored and top["weight"] == 60.0 and site["entries_needed"]["of_jump"] == 1
    states = data["verification"]["states"]
    assert states["original"]["sites"][0]["massive"] and not states["zeroed"]["sites"][0]["massive"]
    assert states["restored"] == states["original"]


def test_quant_rows_equal_a_direct_computation_and_the_marked_token_is_the_outlier(case):
    before = {k: v.clone() for k, v in case.loaded.model.state_dict().items()}
    inputs = load_inputs(case.loaded, str(case.corpus), samples=3, seq_len=24, calib_samples=2, seed=1)
    config = QuantConfig(
        schemes=("W8A8", "A8", "KV4"), strategies=("none", "outlier-tokens", "rotate"), sensitivity="A8", progress=False
    )
    # quant's rotate is the rewrite's: refused on Qwen3-Next (a gated norm); on GPT-OSS (experts stored [expert,
    # in, out]) unrounded it keeps the perplexity
    if case.family == "qwen3_next":
        with pytest.raises(MassactError, match="strategy rotate: .*gated norm"):
            quant_run(case.loaded, inputs, config)
    else:
        unrounded = replace(config, schemes=("W32A32",), strategies=("none", "rotate"), sensitivity=None)
        data = quant_run(case.loaded, inputs, unrounded).to_json()
        (rotated,) = [row["perplexity"] for row in data["rows"] if row["strategy"] == "rotate"]
        assert rotated == pytest.approx(data["baseline"]["perplexity"], rel=1e-5)
    data = quant_run(case.loaded, inputs, replace(config, strategies=("none", "outlier-tokens"))).to_json()
    assert math.isfinite(data["baseline"]["perplexity"])
    assert len(data["rows"]) == 6 and all(math.isfinite(row["perplexity"]) for row in data["rows"])
    # each scheme's "none" row is the model rounded as written out in plain torch (`quantized_by_hand`: int8
    # weights per output channel, int8 Linear inputs per tensor, int4 keys and values per token and head; the
    # fused expert tensors stay as they are), then a cross-entropy over the same windows, one batch of 3
    model, baseline = case.loaded.model, data["baseline"]["perplexity"]
    assert baseline == pytest.approx(perplexity_by_hand(model, inputs.windows), rel=2e-6)
    rows = {row["scheme"]: row["perplexity"] for row in data["rows"] if row["strategy"] == "none"}
    for scheme, bits in (("W8A8", (8, 8, None)), ("A8", (None, 8, None)), ("KV4", (None, None, 4))):
        with quantized_by_hand(model, *bits):
            expected = perplexity_by_hand(model, inputs.windows)
        assert rows[scheme] == pytest.approx(expected, rel=2e-6), scheme
        assert abs(expected / baseline - 1) > 5e-6, scheme  # the rounding shows at that tolerance
    # the BOS carries the plant: the first position is kept; without a BOS the marked word is, wherever it is
    outliers = data["outlier_tokens"]
    expected = (1, []) if case.mark == BOS else (0, [WORD])
    assert (outliers["first_positions"], outliers["token_ids"]) == expected
    assert data["sensitivity"]["massive_blocks"][0] == BLOCK
    after = case.loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _stream(case: Case, length: int = 48) -> torch.Tensor:
    ids = case.loaded.tokenizer(case.corpus.read_text())["input_ids"][:length]
    return torch.tensor(ids)


def _cache_visibility(tokens: int, cache: int, kept: set[int]) -> torch.Tensor:
    """bool [tokens, tokens]: the keys token t attends to when, after every step, the cache holds the `kept`
    tokens and the most recent ones, `cache` entries in all (t itself is the token fed at step t)."""
    visible = torch.zeros(tokens, tokens, dtype=torch.bool)
    held: list[int] = []
    for t in range(tokens):
        held.append(t)
        visible[t, held] = True
        while len(held) > cache:
            held.remove(next(p for p in held if p not in kept))
    return visible


@torch.no_grad()
def _one_forward_seeing(model: torch.nn.Module, ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Logits [tokens, vocab] of one forward in which each softmax-attention block (linear attention keeps its
    whole state) lets token t attend to the keys `visible[t]` only, each at its original position."""
    mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)[None, None]

    def only_visible(module, args, kwargs):
        return args, {**kwargs, "attention_mask": mask}

    attentions = [m for n, m in model.named_modules() if n.endswith(".self_attn")]
    handles = [m.register_forward_pre_hook(only_visible, with_kwargs=True) for m in attentions]
    original = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the mask is added to the scores as it is
    try:
        return model(input_ids=ids[None]).logits[0]
    finally:
        model.set_attn_implementation(original)
        for handle in handles:
            handle.remove()


def test_stream_policies_equal_forwards_that_see_what_each_cache_holds(case):
    """Each policy's NLLs, computed directly: full is one plain forward; window and detected are one forward in
    which token t attends to what that cache holds at step t; recompute is a fresh forward over the 11 tokens
    before each prediction, at their original positions."""
    ids = _stream(case, 36)
    config = StreamConfig(policies="full,window,detected,recompute", cache=10, score_from=16, progress=False)
    result = stream_run(case.loaded, ids, config)
    runs = {run.policy.kind: run for run in result.runs}
    model = case.loaded.model

    def nll(predictions: torch.Tensor) -> torch.Tensor:  # [20, vocab]: the predictions of tokens 16..35
        return torch.nn.functional.cross_entropy(predictions, ids[16:], reduction="none").double()

    with torch.no_grad():
        full = nll(model(input_ids=ids[None]).logits[0, 15:-1])
        recompute = nll(torch.stack([
            model(input_ids=ids[None, t - 11 : t], position_ids=torch.arange(t - 11, t)[None]).logits[0, -1]
            for t in range(16, 36)
        ]))  # fmt: skip
    marked = [i for i, token in enumerate(ids.tolist()) if token == case.mark]
    assert runs["detected"].kept == marked  # every marked token is found and kept
    window = nll(_one_forward_seeing(model, ids, _cache_visibility(36, 10, set()))[15:-1])
    detected = nll(_one_forward_seeing(model, ids, _cache_visibility(36, 10, set(marked)))[15:-1])
    for kind, expected in (("full", full), ("window", window), ("detected", detected), ("recompute", recompute)):
        torch.testing.assert_close(runs[kind].nll, expected, rtol=1e-4, atol=1e-4, msg=kind)
    assert (window - full).abs().max() > 1e-2  # what the window drops changes the predictions


def test_stream_evicts_only_softmax_attention_entries(tmp_path):
    """Qwen3-Next: the cache keeps the linear-attention blocks' fixed-size state whole; only block 3 has entries."""
    case = _build("qwen3_next", tmp_path)
    ids = _stream(case, 30)
    seen = []

    def check(step, cache, in_cache):
        (layer,) = cache_layers(cache)  # one softmax-attention block: one layer of keys and values
        assert layer.keys.shape[2] == len(in_cache) <= 8
        assert [cache.is_linear[i] for i in range(4)] == [True, True, True, False]
        seen.append(step)

    structure = find_structure(case.loaded.model)
    decode_policy(case.loaded.model, structure, ids, Policy.parse("window"), 8, 10, progress=False, inspect_step=check)
    assert seen == list(range(30))


def test_attention_reports_learned_sink_shares_known_exactly():
    """GPT-OSS with zero queries: every visible key has logit 0, so Z = the number of keys a query sees and
    the sink's share is exp(s) / (n + exp(s)); sliding layers see at most `sliding_window` keys."""
    model = tiny_model("gpt_oss")
    sinks = torch.tensor([-1.0, 0.0, math.log(3.0), 2.5])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.q_proj.bias.zero_()
            layer.self_attn.sinks.copy_(sinks)
    loaded = LoadedModel(model=model, tokenizer=number_tokenizer(VOCAB), name="tiny-gpt_oss")
    length, window = 24, model.config.sliding_window
    ids = torch.randint(10, 60, (1, length), generator=torch.Generator().manual_seed(2))
    data = attention_run(loaded, ids, AttentionConfig(intervene=False)).to_json()
    assert data["learned_sinks"] and data["no_softmax_blocks"] == []
    for row, kind in zip(data["blocks"], model.config.layer_types, strict=True):
        seen = torch.arange(1, length + 1, dtype=torch.float64)
        if kind == "sliding_attention":
            seen = seen.clamp(max=window)
        expected = (sinks.double()[:, None].exp() / (seen + sinks.double()[:, None].exp())).mean(-1)
        assert row["per_head"]["learned_sink_share"] == pytest.approx(expected.tolist(), abs=1e-6)
        assert row["learned_sink_share"] == pytest.approx(float(expected.mean()), abs=1e-6)
        # the first token's importance beside it: each query gives it 1 / (n + exp(s)) when it sees it
        first = (1 / (seen + sinks.double()[:, None].exp()))[:, : (window if kind == "sliding_attention" else length)]
        assert row["per_head"]["first_importance"] == pytest.approx(first.mean(-1).tolist(), abs=1e-6)


def _eager_attentions(model, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The attention probabilities transformers' own eager attention returns (the model's setting restored)."""
    original = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(original)


def test_attention_learned_sink_shares_equal_what_transformers_eager_attention_leaves_out(tmp_path):
    """Random weights: the share is 1 - the sum of the probabilities transformers' own eager attention returns."""
    case = _build("gpt_oss", tmp_path)
    ids = case.loaded.tokenizer(case.corpus.read_text())["input_ids"][:28]
    ids = torch.tensor([ids])
    result = attention_run(case.loaded, ids, AttentionConfig())
    for row, probs in zip(result.to_json()["blocks"], _eager_attentions(case.loaded.model, ids), strict=True):
        expected = (1 - probs[0].double().sum(-1)).mean(-1)
        assert row["per_head"]["learned_sink_share"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.sequences[0].sinks == [i for i, t in enumerate(ids[0].tolist()) if t == WORD]
    text = result.to_json()
    assert text["first_massive_block"] == BLOCK
    (tmp_path / "out").mkdir()
    result.write(tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Learned sinks per head" in report and "| learned sink |" in report


def test_attention_marks_blocks_without_softmax_attention(tmp_path):
    case = _build("qwen3_next", tmp_path)
    result = attention_run(case.loaded, case.prompt, AttentionConfig())
    data = result.to_json()
    assert data["no_softmax_blocks"] == [0, 1, 2] and not data["learned_sinks"]
    assert data["sequences"][0]["massive_tokens"] == [case.position] and data["first_massive_block"] == BLOCK
    for row in data["blocks"][:3]:
        assert row["softmax_attention"] is False and row["mixer"] == "Qwen3NextGatedDeltaNet"
        assert row["sink_fraction"] is None and all(v is None for v in row["per_head"]["first_importance"])
    last = data["blocks"][3]
    assert last["softmax_attention"] is True and last["mixer"] == "Qwen3NextAttention"
    assert last["massive_mass"] == pytest.approx(last["first_token_importance"])  # C is the BOS at position 0
    assert 0 < last["massive_mass"] <= 1 and last["decomposition_error"] < 1e-5
    (tmp_path / "out").mkdir()
    result.write(tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Blocks 0, 1, 2 run no softmax attention (Qwen3NextGatedDeltaNet" in report
    # the default heatmap block follows the first massive block (1); block 2 has no map, so block 3 is shown
    assert data["heatmap_block"] == 3 and (tmp_path / "out" / "attention_block3.png").exists()
    assert "| 0 | - | - |" in report


def test_attention_command_marks_learned_sinks_and_blocks_without_softmax(case, tmp_path, capsys):
    """Saved and loaded back by `massact attention`: the JSON says which design each model carries."""
    case.loaded.model.save_pretrained(tmp_path)
    case.loaded.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "prompt.txt").write_text(case.prompt, encoding="utf-8")
    argv = ["attention", str(tmp_path), "--text-file", str(tmp_path / "prompt.txt"), "--device", "cpu", "--json"]
    code, out, err = cli(argv, capsys)
    assert code in (0, None), err
    data = json.loads(out)
    assert data["sequences"][0]["massive_tokens"] == [case.position] and data["first_massive_block"] == BLOCK
    gpt_oss = case.family == "gpt_oss"
    assert data["learned_sinks"] is gpt_oss and data["no_softmax_blocks"] == ([] if gpt_oss else [0, 1, 2])
    softmax = [row["softmax_attention"] for row in data["blocks"]]
    assert softmax == ([True] * 4 if gpt_oss else [False] * 3 + [True])
    if gpt_oss:  # each block's share is what the model's own eager attention leaves out of its keys
        ids = torch.tensor(case.loaded.tokenizer(case.prompt)["input_ids"])[None]
        for row, probs in zip(data["blocks"], _eager_attentions(case.loaded.model, ids), strict=True):
            expected = (1 - probs[0].double().sum(-1)).mean(-1)  # per head, over the queries
            assert row["per_head"]["learned_sink_share"] == pytest.approx(expected.tolist(), abs=1e-5)
            assert row["learned_sink_share"] == pytest.approx(float(expected.mean()), abs=1e-5)
            assert 0.01 < row["learned_sink_share"] < 0.99
    else:
        assert all("learned_sink_share" not in row for row in data["blocks"])


@pytest.mark.parametrize("family", ["gpt_oss", "qwen3_next", "llama"])
def test_quant_names_the_fused_expert_weights_it_leaves_in_full_precision(family, tmp_path):
    from massact.quant.schemes import parse_scheme
    from massact.quant.simulate import quant_context

    case = _build(family, tmp_path) if family != "llama" else None
    loaded = case.loaded if case else LoadedModel(tiny_model("llama"), number_tokenizer(VOCAB, bos=None), "tiny")
    corpus = case.corpus if case else _corpus(tmp_path, WORD)
    inputs = load_inputs(loaded, str(corpus), samples=2, seq_len=16, calib_samples=1, seed=0)
    config = QuantConfig(schemes=("W4",), strategies=("none",), sensitivity=None, progress=False)
    result = quant_run(loaded, inputs, config)
    fused = {n: p for n, p in loaded.model.named_parameters() if p.dim() == 3}
    if family == "llama":
        assert not fused and result.to_json()["unquantized_weights"] is None and result.unquantized_line() is None
        return
    matrices = sum(
        m.weight.numel() for n, m in loaded.model.named_modules() if n.startswith("model.layers.") and is_linear(m)
    )
    data = result.to_json()["unquantized_weights"]
    assert set(data["parameters"]) == set(fused) and data["entries"] == sum(p.numel() for p in fused.values())
    assert data["share"] == pytest.approx(data["entries"] / (data["entries"] + matrices))
    before = {n: p.detach().clone() for n, p in fused.items()}
    with quant_context(loaded, parse_scheme("W4")):  # what the line says: these tensors are left as they are
        assert all(torch.equal(before[n], p) for n, p in loaded.model.named_parameters() if n in before)
    (tmp_path / "out").mkdir()
    result.write(tmp_path / "out")
    assert f"{len(fused)} fused expert weight tensors" in (tmp_path / "out" / "report.md").read_text()
