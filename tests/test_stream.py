"""`massact stream`: bounded KV-cache policies, checked exactly on tiny models with a planted massive token.

The planted token (id MARK) writes a massive value into one dim from block PLANT_BLOCK on, so the test
knows which token `detected` must keep. LLaMA (rotary, a tokenizer that adds MARK as its BOS) and GPT-2
(absolute positions, no BOS) are checked side by side; Qwen2 joins the rotary checks.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run as cli
from planting import MARK, VOCAB, marked_input, plant_massive, tiny_model, word_tokenizer
from transformers import DynamicCache

from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.stream import Policy, StreamConfig, cut_stream, parse_policies, run
from massact.stream.decode import decode_policy, recompute_policy
from massact.stream.kvcache import Rotary, cache_layers, quantize_symmetric
from massact.train.gpt2 import GPT2, GPT2Config

PLANT_BLOCK, PLANT_DIM = 1, 9
FAMILIES = ["llama", "gpt2"]
MARK_WORD = "<mark>"


def word(i: int) -> str:
    return {0: "<eos>", 1: "<unk>", MARK: MARK_WORD}.get(i, f"t{i:02d}")


def planted(family: str) -> LoadedModel:
    model = tiny_model(family)
    plant_massive(model, block=PLANT_BLOCK, dim=PLANT_DIM)
    return LoadedModel(model=model, tokenizer=word_tokenizer(word, bos=family == "llama", eos=0), name=f"tiny-{family}")


def stream_ids(length: int = 40, mark: int = 0) -> torch.Tensor:
    return marked_input(length, mark)[0]


def layer0_keys(model, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Block 0's cached keys of `ids` at `positions` from one fresh forward: [heads, tokens, head_dim]."""
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids.reshape(1, -1), position_ids=positions.reshape(1, -1), cache=cache, use_cache=True)
    return cache_layers(cache)[0].keys[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_at_least_the_stream_makes_every_policy_full(family):
    loaded = planted(family)
    ids = stream_ids(20)
    policies = "full,window,sinks:2,detected,recompute"
    result = run(loaded, ids, StreamConfig(policies=policies, cache=20, score_from=3, progress=False))
    full = result.runs[0].nll
    assert full.numel() == 20 - 3
    for outcome in result.runs[1:]:
        torch.testing.assert_close(outcome.nll, full, rtol=1e-5, atol=1e-5)
    rows = result.to_json()["rows"]
    assert {r["perplexity"] for r in rows[:-1]} == {rows[0]["perplexity"]}  # the cache policies: bit-identical


def test_cache_positions_with_a_large_cache_equal_full():
    loaded = planted("llama")
    ids = stream_ids(24)
    config = StreamConfig(policies="full,window,sinks:1", cache=24, score_from=2, positions="cache", progress=False)
    result = run(loaded, ids, config)
    for outcome in result.runs[1:]:
        torch.testing.assert_close(outcome.nll, result.runs[0].nll, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec,expected", [("window", 0), ("sinks:3", 3)])
def test_cache_after_eviction_holds_exactly_the_kept_positions(family, spec, expected):
    loaded = planted(family)
    ids = stream_ids(30)
    cache_size = 8
    reference = layer0_keys(loaded.model, ids, torch.arange(30))  # block 0 keys depend on token and position only
    seen = []

    def check(step, cache, in_cache):
        want = list(range(min(expected, step + 1))) + [
            p for p in range(max(expected, step + 1 - (cache_size - expected)), step + 1) if p >= expected
        ]
        assert in_cache == want
        keys = cache_layers(cache)[0].keys[0]
        assert keys.shape[1] == len(want) == min(step + 1, cache_size)
        torch.testing.assert_close(keys, reference[:, want], rtol=1e-5, atol=1e-6)
        seen.append(step)

    decode_policy(
        loaded.model,
        find_structure(loaded.model),
        ids,
        Policy.parse(spec),
        cache_size,
        10,
        progress=False,
        inspect_step=check,
    )
    assert seen == list(range(30))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cache_positions_rerotate_kept_keys_to_keys_at_new_positions(family):
    model = tiny_model(family)
    ids = stream_ids(30)
    cache_size, sinks = 8, 2
    seen = []

    def check(step, cache, in_cache):
        keys = cache_layers(cache)[0].keys[0]
        fresh = layer0_keys(model, ids[in_cache], torch.arange(len(in_cache)))  # kept tokens at positions 0..n-1
        torch.testing.assert_close(keys, fresh, rtol=1e-4, atol=1e-5)
        seen.append(step)

    structure = find_structure(model)
    decode_policy(
        model,
        structure,
        ids,
        Policy.parse(f"sinks:{sinks}"),
        cache_size,
        10,
        positions="cache",
        progress=False,
        inspect_step=check,
    )
    assert len(seen) == 30
    rotary = Rotary.of(model)
    moved = layer0_keys(model, ids[:6], torch.arange(40, 46))
    torch.testing.assert_close(
        rotary.rotate(moved, -40), layer0_keys(model, ids[:6], torch.arange(6)), rtol=1e-4, atol=1e-5
    )
    assert rotary.check(model, ids) < 1e-5


@pytest.mark.parametrize("positions", ["original", "cache"])
def test_absolute_positions_refuse_cache_positions(positions):
    loaded = planted("gpt2")
    config = StreamConfig(policies="window", cache=8, score_from=10, positions=positions, progress=False)
    if positions == "cache":
        with pytest.raises(MassactError, match="no rotary position embedding.*`positions='original'`"):
            run(loaded, stream_ids(20), config)
    else:
        assert run(loaded, stream_ids(20), config).rows()[0]["tokens_scored"] == 10


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stride", [1, 3])
def test_recompute_equals_a_fresh_forward_over_its_window(family, stride):
    loaded = planted(family)
    ids = stream_ids(30)
    cache_size, score_from = 6, 14
    outcome = recompute_policy(
        loaded.model, ids, Policy.parse("recompute"), cache_size, score_from, stride=stride, progress=False
    )
    assert outcome.nll.numel() == 30 - score_from
    for i, target in enumerate(range(score_from, 30)):
        end = score_from + min(len(range(score_from, 30)) - 1, (i // stride + 1) * stride - 1)  # its group's last
        start = end - cache_size - 1
        with torch.no_grad():
            logits = loaded.model(
                input_ids=ids[start:end].reshape(1, -1), position_ids=torch.arange(start, end).reshape(1, -1)
            ).logits[0]
        expected = torch.nn.functional.cross_entropy(logits[target - 1 - start], ids[target]).double()
        torch.testing.assert_close(outcome.nll[i], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_detected_keeps_the_planted_token_wherever_it_arrives(family):
    loaded = planted(family)
    ids = stream_ids(40, mark=5)
    config = StreamConfig(policies="window,detected", cache=10, score_from=21, progress=False)
    result = run(loaded, ids, config)
    window, detected = result.runs
    assert window.kept == [] and 5 not in window.final_positions
    assert detected.kept == [5] and 5 in detected.final_positions
    found = result.to_json()["detected"]["tokens"]
    assert [(t["position"], t["dim"]) for t in found] == [(5, PLANT_DIM)]
    assert min(found[0]["massive_blocks"]) == PLANT_BLOCK


@pytest.mark.parametrize("family", FAMILIES)
def test_detected_equals_one_sink_when_the_first_token_is_the_sink(family):
    """LLaMA: the tokenizer's BOS is the planted token; GPT-2: the stream's first text token is."""
    loaded = planted(family)
    words = [word(i) for i in marked_input(60, 0, seed=4)[0].tolist()]
    text = " ".join(words if family == "gpt2" else words[1:])
    stream = cut_stream(loaded.tokenizer, text, offset=0, tokens=40, source="words")
    assert stream.ids[0] == MARK
    assert stream.prefix == ([MARK_WORD] if family == "llama" else [])
    result = run(loaded, stream, StreamConfig(policies="sinks:1,detected", cache=8, score_from=17, progress=False))
    one, detected = result.runs
    assert detected.kept == one.kept == [0]
    torch.testing.assert_close(detected.nll, one.nll, rtol=0, atol=0)
    assert result.to_json()["stream"]["prefix_tokens"] == stream.prefix


def test_quantizer_is_symmetric_per_token_and_head():
    x = torch.randn(1, 3, 5, 16, generator=torch.Generator().manual_seed(0))
    for bits in (4, 8):
        q = quantize_symmetric(x, bits)
        scale = x.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert ((q - x).abs() <= scale / 2 + 1e-6).all()
        assert torch.allclose((q / scale).round(), q / scale, atol=1e-4)  # on the integer grid
        torch.testing.assert_close(q.abs().amax(-1), x.abs().amax(-1))  # the absmax is exact
    assert (quantize_symmetric(x, 4) - x).abs().mean() > (quantize_symmetric(x, 8) - x).abs().mean()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "spec,sink_exact", [("sinks:1@int4", False), ("sinks:1@int4+sinks", True), ("detected@int8+sinks", True)]
)
def test_quantized_cache_keeps_sinks_in_full_precision_when_asked(family, spec, sink_exact):
    loaded = planted(family)
    ids = stream_ids(20)
    reference = layer0_keys(loaded.model, ids, torch.arange(20))
    last = {}

    def grab(step, cache, in_cache):
        last["keys"], last["positions"] = cache_layers(cache)[0].keys[0].clone(), in_cache

    decode_policy(
        loaded.model, find_structure(loaded.model), ids, Policy.parse(spec), 8, 10, progress=False, inspect_step=grab
    )
    keys, positions = last["keys"], last["positions"]
    assert positions[0] == 0
    sink_error = (keys[:, 0] - reference[:, 0]).abs().max()
    assert (sink_error < 1e-5) == sink_exact
    bits = 8 if "int8" in spec else 4
    torch.testing.assert_close(keys[:, 1:], quantize_symmetric(reference[:, positions[1:]], bits))


def test_trained_gpt2_without_a_cache_runs_recompute_only():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=16, attention="sink")).eval()
    loaded = LoadedModel(model=model, name="gpt2-sink")
    ids = stream_ids(30)
    with pytest.raises(MassactError, match="takes no past_key_values.*`policies='recompute'`"):
        run(loaded, ids, StreamConfig(policies="full", cache=8, score_from=10, progress=False))
    with pytest.raises(MassactError, match="no position_ids.*`positions='cache'`"):
        run(loaded, ids, StreamConfig(policies="recompute", cache=8, score_from=10, progress=False))
    result = run(
        loaded, ids, StreamConfig(policies="recompute", cache=8, score_from=10, positions="cache", progress=False)
    )
    with torch.no_grad():
        logits = model(ids[20:29].reshape(1, -1)).logits[0, -1]
    expected = torch.nn.functional.cross_entropy(logits, ids[29]).double()
    torch.testing.assert_close(result.runs[0].nll[-1], expected)


def test_policy_names_parse_and_bad_ones_refuse():
    names = [p.name for p in parse_policies("full, window,sinks:4,detected,recompute,full@int8,sinks:2@int4+sinks")]
    assert names == ["full", "window", "sinks:4", "detected", "recompute", "full@int8", "sinks:2@int4+sinks"]
    for bad, words in [
        ("sink:4", "unknown policy"),
        ("sinks:0", "N >= 1"),
        ("full@int3", "4 or 8 bits"),
        ("recompute@int4", "no cache"),
        ("full,full", "more than once"),
    ]:
        with pytest.raises(MassactError, match=words):
            parse_policies(bad)
    with pytest.raises(MassactError, match="not larger than sinks:8"):
        StreamConfig(policies="sinks:8", cache=8)
    with pytest.raises(MassactError, match="`positions='rope'`"):
        StreamConfig(positions="rope")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-bos")
    loaded = planted("llama")
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    text = path / "words.txt"
    text.write_text(" ".join(word(i) for i in marked_input(300, 3, seed=5)[0].tolist()), encoding="utf-8")
    return path


def test_cli_writes_table_json_report_and_figure(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "stream",
        str(model_dir),
        "--text-file",
        str(model_dir / "words.txt"),
        "--offset",
        "4",
        "--tokens",
        "60",
        "--cache",
        "8",
        "--policies",
        "full,window,sinks:1,detected",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--json",
    ]
    code, stdout, stderr = cli(argv, capsys)
    assert code in (0, None), stderr
    data = json.loads(stdout)
    assert data["score_from"] == 17 and data["stream"]["prefix_tokens"] == [MARK_WORD]
    assert [r["policy"] for r in data["rows"]] == ["full", "window", "sinks:1", "detected"]
    for row in data["rows"]:
        assert set(row) >= {"policy", "cache", "kept_tokens", "perplexity", "tokens_scored"}
        assert row["tokens_scored"] == 60 - 17
    assert data["rows"][3]["kept_tokens"] == [0]  # the BOS, which is the planted token
    assert data["running_perplexity"]["window"]["token"][-1] == 59
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert {"report.md", "running_perplexity.png", "stream.json"} <= set(written)
    assert "running_perplexity.png" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--policies", "window,lru"], "unknown policy 'lru'"),
        (["--cache", "4", "--policies", "sinks:4"], "--cache 4 is not larger than sinks:4"),
        (["--offset", "100000"], "--offset 100000 is past the end"),
        (["--offset", "290"], "runs past the end of the text"),
        (["--tokens", "200", "--score-from", "20"], "longer than the model's context (128 tokens)"),
    ],
)
def test_cli_bad_inputs_fail_in_one_line_and_write_nothing(model_dir, tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    argv = [
        "stream",
        str(model_dir),
        "--text-file",
        str(model_dir / "words.txt"),
        "--tokens",
        "40",
        "--cache",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]
    code, stdout, stderr = cli(argv, capsys)
    assert code == 2
    assert stderr.startswith("massact: error: ") and words in stderr and stderr.count("\n") == 1
    assert not out.exists()
