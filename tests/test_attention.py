"""Attention capture and measures on tiny random models (exact answers known), plus SmolLM2 end to end."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from planting import MARK, marked_input, plant_massive, word_tokenizer
from torch import nn

from massact.attention import AttentionConfig, capture_attention, run
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure

TOKENS = 32
VOCAB = 64


def tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "llama":  # rotary, grouped-query (4 query heads on 2 key/value heads)
        config = tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            attention_bias=True,
        )
        model = tf.LlamaForCausalLM(config)
    elif family == "gpt2":  # learned positions, fused qkv Conv1D
        config = tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
        model = tf.GPT2LMHeadModel(config)
    elif family == "gemma2":  # logit soft-capping, sliding window shorter than the sequence, multi-query
        config = tf.Gemma2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            vocab_size=VOCAB,
            sliding_window=6,
            attn_logit_softcapping=1.5,
            query_pre_attn_scalar=4,
        )
        model = tf.Gemma2ForCausalLM(config)
    else:
        raise ValueError(family)
    return model.eval()


def eager_attentions(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What transformers itself returns with eager attention and output_attentions=True."""
    original = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(original)


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(getattr(m, "_forward_hooks_with_kwargs", {}))
        for m in model.modules()
    )


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_probabilities_equal_transformers_eager(family):
    model = tiny(family)
    structure = find_structure(model)
    ids = torch.randint(0, VOCAB, (1, TOKENS), generator=torch.Generator().manual_seed(3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    implementation = model.config._attn_implementation
    with torch.no_grad():
        before = model(input_ids=ids).logits
    options = AttentionConfig(keep_maps=range(len(structure)), logits=True, sinks=[0, 5])
    result = run(LoadedModel(model), ids, options)
    assert hook_count(model) == 0  # checked before transformers' own output_attentions adds its hooks
    reference = eager_attentions(model, ids)
    sequence = result.sequences[0]
    for block, expected in enumerate(reference):
        torch.testing.assert_close(sequence.maps[block], expected[0].float(), rtol=0, atol=1e-6)
        rebuilt = torch.softmax(sequence.logit_maps[block].nan_to_num(nan=-torch.inf), dim=-1)
        torch.testing.assert_close(rebuilt, expected[0].float(), rtol=0, atol=1e-5)
        assert sequence.blocks[block].decomposition_error < 1e-5
    if family == "gemma2":  # the sliding window really masks: query 20 cannot see key 0 in the sliding blocks
        sliding = [i for i, kind in enumerate(model.config.layer_types) if kind == "sliding_attention"]
        assert sliding and all(sequence.maps[i][:, 20, :14].abs().max() == 0 for i in sliding)
    # the model is left exactly as it was
    assert model.config._attn_implementation == implementation
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def first_token_importance(attentions: torch.Tensor) -> torch.Tensor:
    """Per head, mean over queries (all see key 0 under a causal mask) of the probability on key 0."""
    return attentions[0, :, :, 0].mean(-1)


@torch.no_grad()
def planted_sink(heads: tuple[int, ...]) -> tuple[nn.Module, torch.Tensor]:
    """A massive activation in dim 11 of token 0 from block 1 on; in block 2 `heads` attend to token 0 only."""
    model = tiny("llama")
    plant_massive(model, block=1, dim=11)
    attn = find_structure(model).attn(2)
    head_dim = attn.head_dim
    component = head_dim // 2 - 1  # the slowest rotary frequency: hardly rotates over 32 positions
    for head in heads:
        attn.q_proj.weight[head * head_dim + component] = 0.0
        attn.q_proj.bias[head * head_dim + component] = 10.0
        kv = head // attn.num_key_value_groups
        attn.k_proj.weight[kv * head_dim + component] = 0.0
        attn.k_proj.weight[kv * head_dim + component, 11] = 10.0
    ids = marked_input(TOKENS, token=0)
    assert int(ids[0, 0]) == MARK
    return model, ids


@pytest.mark.parametrize("heads", [(0, 1), (0, 1, 2, 3)])
def test_planted_sink_found_exactly(heads):
    model, ids = planted_sink(heads)
    result = run(LoadedModel(model), ids, AttentionConfig(threshold=0.3))
    sequence = result.sequences[0]
    assert sequence.sinks == [0]  # massact's own detection finds the planted token
    assert sequence.first_massive_block == 1
    reference = eager_attentions(model, ids)
    rows = result.block_summary()
    for block, attentions in enumerate(reference):
        expected = first_token_importance(attentions)
        torch.testing.assert_close(sequence.blocks[block].first_importance, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(sequence.blocks[block].massive_mass, expected, rtol=0, atol=1e-6)
        expected_sinks = [h for h in range(4) if expected[h] > 0.3]
        assert rows[block]["sink_heads"] == expected_sinks
        assert rows[block]["sink_fraction"] == len(expected_sinks) / 4
    assert rows[2]["sink_heads"] == list(heads)  # the planted heads, and only they
    assert all(rows[b]["sink_heads"] == [] for b in (0, 1))
    planted = sequence.blocks[2]
    for head in heads:  # c_i = p_i0 v_0 with p_i0 ~ 1: the same vector for every query
        assert planted.first_importance[head] > 0.99
        assert planted.c_relvar[head] < 1e-3
        assert planted.c_cosine[head] > 0.9999
        assert abs(planted.c_share[head] - 1) < 1e-2


def test_replacing_a_constant_c_part_by_its_mean_changes_little():
    model, ids = planted_sink((0, 1, 2, 3))
    result = run(LoadedModel(model), ids)
    planted = result.sequences[0].blocks[2]
    assert planted.replace_mean_change < 1e-2  # measured, by running the block again
    assert planted.replace_zero_change > 0.3  # the control: removing the C part does change the output
    open_block = result.sequences[0].blocks[0]  # no sink there: the C part is not a constant
    assert open_block.replace_mean_change > 10 * planted.replace_mean_change


def test_default_keeps_no_attention_map():
    model = tiny("llama")
    ids = torch.randint(0, VOCAB, (1, TOKENS), generator=torch.Generator().manual_seed(4))
    result = run(LoadedModel(model), ids, AttentionConfig(block=1, display_tokens=10, sinks=[0]))
    sequence = result.sequences[0]
    assert sequence.maps == {} and sequence.logit_maps == {}
    assert sequence.heatmap.shape == (10, 10)
    expected = eager_attentions(model, ids)[1][0, :, :10, :10].mean(0)
    torch.testing.assert_close(sequence.heatmap, expected, rtol=0, atol=1e-6)


def test_hooks_and_implementation_restored_after_an_error():
    model = tiny("gpt2")
    structure = find_structure(model)
    implementation = model.config._attn_implementation

    def failing(call):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), capture_attention(model, structure, failing), torch.no_grad():
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))
    assert model.config._attn_implementation == implementation
    assert hook_count(model) == 0
    with torch.no_grad():  # and the registered function no longer reports to anyone
        model.set_attn_implementation("eager")
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))
        model.set_attn_implementation(implementation)


def test_block_out_of_range():
    model = tiny("llama")
    ids = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(MassactError, match=r"`block=3` is out of range; the model has blocks 0\.\.2"):
        run(LoadedModel(model), ids, AttentionConfig(block=3))


class PlainAttentionModel(nn.Module):
    """Blocks with torch's own nn.MultiheadAttention: no transformers attention interface."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True) for _ in range(2))

    def forward(self, input_ids, **kwargs):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


def test_model_without_attention_interface_is_refused_with_reason():
    model = PlainAttentionModel().eval()
    with pytest.raises(MassactError, match="PlainAttentionModel is not a transformers model.*attention interface"):
        run(LoadedModel(model), torch.zeros(1, 8, dtype=torch.long))


def test_too_long_for_memory_is_refused_with_the_estimate():
    model = tiny("llama")
    ids = torch.zeros(1, 1024, dtype=torch.long)
    # 4 heads x 1024^2 x 4 bytes x 4 copies + a 1024^2 float mask = 68 MiB = 0.066 GiB
    with pytest.raises(MassactError, match=r"1024 tokens need about 0\.07 GiB .*4 heads x 1024\^2") as info:
        run(LoadedModel(model), ids, AttentionConfig(max_memory=2**20))
    assert "only 0.00 GiB is available" in str(info.value)


def test_sink_tokens_out_of_range():
    model = tiny("llama")
    with pytest.raises(MassactError, match=r"`sinks` holds \[8\], out of range"):
        run(LoadedModel(model), torch.zeros(1, 8, dtype=torch.long), AttentionConfig(sinks=[8]))


@pytest.mark.slow
def test_cli_on_smollm2(smollm2, tmp_path, monkeypatch):
    from massact.cli import main

    monkeypatch.setattr("massact.commands.common.load_for_cli", lambda *args: smollm2)
    out = tmp_path / "att"
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["attention", "--prompt", "Summer is warm. Winter is cold.", "--out", str(out), "--logits", "--block", "13"]
        )
    assert exit_info.value.code == 0
    data = json.loads((out / "attention.json").read_text())
    assert data["first_massive_block"] is not None and data["sequences"][0]["massive_tokens"][0] == 0
    assert data["logits_error"] < 1e-5
    ids = smollm2.tokenizer("Summer is warm. Winter is cold.", return_tensors="pt")["input_ids"]
    assert len(data["tokens"]) == ids.shape[1]
    assert_sink_measures(data["blocks"], eager_sink_measures(smollm2.model, ids))
    for name in ("attention_block13.png", "attention_logits_block13.png", "attention_sinks.png", "attention_bias.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["attention", "--block", "30", "--prompt", "Hello there"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_corpus_windows_on_smollm2(smollm2):
    from massact.data.corpus import load_windows

    ids = load_windows(smollm2.tokenizer, corpus="shakespeare", samples=2, seq_len=48, seed=0)
    result = run(smollm2, ids, AttentionConfig(intervene=False))
    assert len(result.sequences) == 2
    assert_sink_measures(result.block_summary(), eager_sink_measures(smollm2.model, ids))
    assert all(0 in s.sinks for s in result.sequences)


def eager_sink_measures(model: nn.Module, ids: torch.Tensor, threshold: float = 0.3) -> list[dict]:
    """Per block, from transformers' own eager probabilities: the first token's importance (mean attention it
    gets from the queries, all of which see it), the share of (sequence, head) pairs above `threshold`, and the
    heads above it in at least half the sequences."""
    rows = []
    for probs in eager_attentions(model, ids):  # [sequences, heads, queries, keys]
        importance = probs[..., 0].double().mean(-1)  # [sequences, heads]
        sink = (importance > threshold).double()
        rows.append(
            {
                "importance": importance,
                "sink_fraction": float(sink.mean()),
                "first_token_importance": float(importance.mean()),
                "sink_heads": [h for h in range(sink.shape[1]) if float(sink[:, h].mean()) >= 0.5],
            }
        )
    return rows


def assert_sink_measures(rows: list[dict], expected: list[dict], threshold: float = 0.3) -> None:
    assert len(rows) == len(expected)
    checked = 0
    for row, want in zip(rows, expected, strict=True):
        assert row["first_token_importance"] == pytest.approx(want["first_token_importance"], abs=1e-5)
        if bool(((want["importance"] - threshold).abs() > 1e-4).all()):  # no head on the threshold
            assert row["sink_fraction"] == pytest.approx(want["sink_fraction"], abs=1e-6)
            assert row["sink_heads"] == want["sink_heads"]
            checked += 1
    assert checked >= len(rows) - 2
    assert len({row["sink_fraction"] for row in rows}) > 1  # blocks differ: not a constant


# --- windows, config and wording -------------------------------------------------------------------

PLANT_BLOCK = 1
PLANT_DIM = 11


def word(i: int) -> str:
    return f"w{i}"


def planted_loaded(family: str, bos: bool):
    """A tiny planted model whose massive activation sits on MARK, with a word tokenizer (BOS = MARK or none)."""
    from planting import tiny_model

    from massact.models.loading import LoadedModel

    model = tiny_model(family)
    plant_massive(model, block=PLANT_BLOCK, dim=PLANT_DIM)
    return LoadedModel(model=model, tokenizer=word_tokenizer(word, bos), name=f"tiny-{family}")


@pytest.fixture
def corpus_file(tmp_path):
    """A text of words w10..w63 (never MARK's word), 600 words."""
    generator = torch.Generator().manual_seed(3)
    words = [word(int(i)) for i in torch.randint(10, VOCAB, (600,), generator=generator)]
    path = tmp_path / "words.txt"
    path.write_text(" ".join(words), encoding="utf-8")
    return path


@pytest.mark.parametrize(("family", "bos"), [("llama", True), ("gpt2", False), ("qwen2", True)])
def test_corpus_windows_start_like_the_tokenizer(family, bos, corpus_file):
    from massact.attention import AttentionConfig, corpus_input, run

    loaded = planted_loaded(family, bos)
    inputs = corpus_input(loaded, str(corpus_file), samples=3, seq_len=12, seed=0)
    assert tuple(inputs.input_ids.shape) == (3, 12)  # --seq-len stays the total length
    assert inputs.prefix_tokens == ([word(MARK)] if bos else [])
    assert bool((inputs.input_ids[:, 0] == MARK).all()) is bos
    assert int((inputs.input_ids[:, 1:] == MARK).sum()) == 0
    result = run(loaded, inputs, AttentionConfig(intervene=False))
    data = result.to_json()
    assert data["prefix_tokens"] == inputs.prefix_tokens
    assert data["source"] == {"corpus": str(corpus_file), "samples": 3, "seq_len": 12, "seed": 0}
    if bos:  # the BOS carries the planted activation: it is the token C of every window
        assert [s["massive_tokens"] for s in data["sequences"]] == [[0], [0], [0]]
        assert data["first_massive_block"] == PLANT_BLOCK
    else:
        assert [s["massive_tokens"] for s in data["sequences"]] == [[], [], []]
        assert data["first_massive_block"] is None
    without = corpus_input(loaded, str(corpus_file), samples=3, seq_len=12, seed=0, add_special_tokens=False)
    assert without.prefix_tokens == [] and int((without.input_ids == MARK).sum()) == 0


@pytest.mark.parametrize(("family", "bos"), [("llama", True), ("gpt2", False)])
def test_cli_corpus_json_records_the_prefix(family, bos, corpus_file, tmp_path, capsys, monkeypatch):
    from cli_runner import run as cli

    loaded = planted_loaded(family, bos)
    monkeypatch.setattr("massact.commands.common.load_for_cli", lambda *args: loaded)
    out = tmp_path / "att"
    argv = ["attention", "tiny", "--corpus", str(corpus_file), "--samples", "2", "--seq-len", "10"]
    code, stdout, _ = cli([*argv, "--json", "--no-intervene", "--out", str(out)], capsys)
    assert code == 0
    data = json.loads(stdout)
    assert data["prefix_tokens"] == ([word(MARK)] if bos else [])
    assert json.loads((out / "attention.json").read_text()) == data
    report = (out / "report.md").read_text()
    assert ("each starting with `w7`" in report) is bos
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [
            "attention.json",
            "report.md",
            "report.html",
            "attention_sinks.png",
            "attention_bias.png",
            f"attention_block{data['heatmap_block']}.png",
        ]
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_wording_names_chosen_and_massive_tokens_plainly(family, capsys):
    from rich.console import Console

    from massact.attention import AttentionConfig, run

    loaded = planted_loaded(family, bos=False)
    ids = marked_input(TOKENS, token=0)
    found = run(loaded, ids, AttentionConfig(intervene=False))
    chosen = run(loaded, ids, AttentionConfig(intervene=False, sinks=[2, 5]))
    nothing = run(
        planted_loaded(family, bos=False), marked_input(TOKENS, token=0)[:, 1:], AttentionConfig(intervene=False)
    )
    texts = []
    for result in (found, chosen, nothing):
        console = Console(width=400, record=True)
        result.show(console)
        texts.append(console.export_text())
    assert f"massive activations appear from block {PLANT_BLOCK}" in texts[0]
    assert "C is the massive-activation token of the sequence: 0 ('w7')" in texts[0]
    assert "C is the chosen tokens at positions 2, 5" in texts[1] and "massive-activation token" not in texts[1]
    assert chosen.to_json()["tokens_chosen"] is True and found.to_json()["tokens_chosen"] is False
    assert "No token of the sequence has massive activations, so C is empty" in texts[2]
    assert "no block has massive activations" in texts[2]
    for text in texts:
        assert "None" not in text and "= none" not in text


def test_config_is_validated_before_any_work():
    from massact.attention import AttentionConfig

    for kwargs, message in (
        ({"threshold": 1.5}, "`threshold=1.5`"),
        ({"display_tokens": 1}, "`display_tokens=1`"),
        ({"block": -1}, "`block=-1`"),
        ({"sinks": [-2]}, r"`sinks=\[-2\]`"),
    ):
        with pytest.raises(MassactError, match=message):
            AttentionConfig(**kwargs)
