"""Mixture-of-experts models (fused 3-D expert weights, as transformers 5 stores them) through every command.

Tiny Mixtral (its tokenizer adds a BOS) and Qwen2-MoE (no BOS, plus a shared expert) are built here
with a planted massive activation whose writer is known exactly: a carrier dim `c` is set on the
MARK token's embedding only and nothing else writes it; in block `BLOCK` the router sends MARK to
expert `EXPERT` (router weight ~1), one unit `UNIT` of that expert reads the carrier, and the single
entry `down_proj[EXPERT, DIM, UNIT]` of the fused down-projection writes a huge value into `DIM`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from cli_runner import run
from planting import (
    MOE_BLOCK,
    MOE_BOS,
    MOE_CARRIER,
    MOE_DIM,
    MOE_EXPERT,
    MOE_GAIN,
    MOE_UNIT,
    VOCAB,
    H,
    down_rows,
    mixtral,
    number_tokenizer,
    plant_moe,
)

from massact.models.loading import LoadedModel, load_model
from massact.models.structure import MoeParts, find_structure
from massact.trace import TraceConfig, TraceInputs
from massact.trace import run as trace_run

BLOCK, EXPERT, UNIT, DIM, CARRIER, GAIN = MOE_BLOCK, MOE_EXPERT, MOE_UNIT, MOE_DIM, MOE_CARRIER, MOE_GAIN
WORD = 7  # the planted token of the model without BOS
BOS = MOE_BOS  # the BOS id of the model with one; it is also its planted token


def qwen2_moe() -> tf.PreTrainedModel:
    config = tf.Qwen2MoeConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=48, moe_intermediate_size=24,
        shared_expert_intermediate_size=40, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        num_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return tf.Qwen2MoeForCausalLM(config)


def _corpus(mark: int, words: int = 2000) -> str:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 60, (words,), generator=generator)
    ids[ids == WORD] = 10
    if mark == WORD:
        ids[::9] = WORD
    return " ".join(str(int(i)) for i in ids)


FAMILIES = {
    "mixtral": (mixtral, BOS, "12 30 41 9 22 17"),  # BOS-adding tokenizer: massive on the BOS at token 0
    "qwen2_moe": (qwen2_moe, WORD, f"12 30 {WORD} 41 9 22"),  # massive on the planted word at token 2
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def moe_dir(request, tmp_path_factory) -> tuple[str, Path, int]:
    """(family, saved model directory with its tokenizer and corpus.txt, planted token position)."""
    build, mark, prompt = FAMILIES[request.param]
    torch.manual_seed(0)
    model = build().eval()
    plant_moe(model, mark)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    number_tokenizer(VOCAB, bos=BOS if mark == BOS else None).save_pretrained(folder)
    (folder / "corpus.txt").write_text(_corpus(mark), encoding="utf-8")
    (folder / "prompt.txt").write_text(prompt, encoding="utf-8")
    position = 0 if mark == BOS else prompt.split().index(str(WORD))
    return request.param, folder, position


def _qwen3_moe() -> tf.PreTrainedModel:
    config = tf.Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=48, moe_intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    return tf.Qwen3MoeForCausalLM(config)


def _olmoe() -> tf.PreTrainedModel:
    config = tf.OlmoeConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return tf.OlmoeForCausalLM(config)


@pytest.mark.parametrize(
    "build,shared",
    [(mixtral, ()), (qwen2_moe, ("shared_expert",)), (_qwen3_moe, ()), (_olmoe, ())],
    ids=["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"],
)
def test_structure_finds_the_sparse_moe_block_and_its_parts(build, shared):
    model = build()
    structure = find_structure(model)
    assert structure.blocks_path == "model.layers" and len(structure) == 3
    for i in range(3):
        assert structure.mlp_path(i) == f"model.layers.{i}.mlp"
        assert "SparseMoe" in type(structure.mlp(i)).__name__
        moe = structure.moe(i)
        assert moe == MoeParts(experts="experts", num_experts=4, fused=True, router="gate", shared=shared)
        assert structure.mlp(i).get_submodule(moe.experts).down_proj.dim() == 3


def test_a_dense_mlp_has_no_moe_parts():
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=48,
                                               num_hidden_layers=2, num_attention_heads=4))  # fmt: skip
    assert find_structure(model).moe(0) is None


def _json(argv: list[str], capsys) -> dict:
    code, out, err = run([*argv, "--device", "cpu", "--json"], capsys)
    assert code in (0, None), err
    return json.loads(out)


def test_scan_finds_the_planted_site(moe_dir, capsys):
    family, folder, position = moe_dir
    data = _json(["scan", str(folder), "--text-file", str(folder / "prompt.txt")], capsys)
    (site,) = data["summary"]["sites"]
    assert (site["token"], site["dim"], site["first_block"]) == (position, DIM, BLOCK)
    assert site["token_kind"] == ("first" if family == "mixtral" else "other")


def test_corpus_scan_finds_the_planted_site(moe_dir, capsys):
    family, folder, _ = moe_dir
    argv = ["scan", str(folder), "--corpus", str(folder / "corpus.txt"), "--samples", "4", "--seq-len", "32"]
    data = _json(argv, capsys)
    assert data["prefix_tokens"] == (["63"] if family == "mixtral" else [])
    assert data["fraction_with_massive"] == [0.0, 1.0, 1.0]
    group = data["groups"][0]
    assert (group["dim"], group["emerge_block"]) == (DIM, BLOCK)
    assert group["token_kind"] == ("first" if family == "mixtral" else "other")


def test_intervene_zeroes_the_planted_site(moe_dir, tmp_path, capsys):
    family, folder, _ = moe_dir
    out = tmp_path / "intervene"
    argv = ["intervene", str(folder), "--corpus", str(folder / "corpus.txt"), "--samples", "4", "--seq-len", "32"]
    code, _, err = run([*argv, "--block", f"{BLOCK}-", "--device", "cpu", "--out", str(out)], capsys)
    assert code in (0, None), err
    data = json.loads((out / "intervene.json").read_text())
    rows = {row["mode"]: row for row in data["rows"]}
    assert rows["zero"]["sites_by_block"][str(BLOCK)] >= 4  # every window holds the planted site
    assert rows["zero"]["sites_by_block"][str(BLOCK + 1)] == 0  # zeroed at its first block, it never comes back
    # the planted value is the same on every planted token, so its mean puts back exactly what was there
    assert rows["mean"]["perplexity"] == pytest.approx(rows["original"]["perplexity"], rel=1e-4)


def test_attention_sees_the_massive_token(moe_dir, capsys):
    family, folder, position = moe_dir
    argv = ["attention", str(folder), "--text-file", str(folder / "prompt.txt"), "--block", str(BLOCK + 1)]
    data = _json(argv, capsys)
    assert data["first_massive_block"] == BLOCK
    assert data["sequences"][0]["massive_tokens"] == [position]


def test_export_lists_the_planted_site(moe_dir, tmp_path, capsys):
    family, folder, _ = moe_dir
    out = tmp_path / "export"
    argv = ["export", str(folder), "--corpus", str(folder / "corpus.txt"), "--samples", "4", "--seq-len", "32"]
    code, _, err = run([*argv, "--device", "cpu", "--out", str(out)], capsys)
    assert code in (0, None), err
    data = json.loads((out / "sites.json").read_text())
    assert data["prefix_tokens"] == (["63"] if family == "mixtral" else [])
    assert {(s["block"], s["dim"]) for s in data["sites"]} == {(BLOCK, DIM), (BLOCK + 1, DIM)}


def _check_planted_trace(site: dict, position: int) -> None:
    assert (site["token"], site["dim"], site["block"]) == (position, DIM, BLOCK)
    assert site["writer"] == "expert" and site["expert"] == EXPERT
    assert site["module"] == f"model.layers.{BLOCK}.mlp.experts"
    routed = {row["expert"]: row for row in site["experts"]}
    assert routed[EXPERT]["router_weight"] > 0.99
    assert routed[EXPERT]["update"] == pytest.approx(routed[EXPERT]["router_weight"] * routed[EXPERT]["expert_output"])
    split = sum(row["update"] for row in site["experts"]) + (site["shared_update"] or 0.0)
    assert split == pytest.approx(site["mlp_update"], rel=1e-4)
    assert routed[EXPERT]["update"] > 0.999 * site["jump"]
    top = site["entries"][0]
    assert top["parameter"] == f"model.layers.{BLOCK}.mlp.experts.down_proj"
    assert (top["expert"], top["row"], top["column"], top["stored_index"]) == (EXPERT, DIM, UNIT, [EXPERT, DIM, UNIT])
    assert top["weight"] == GAIN and top["weight_rank"] == 1
    assert top["contribution"] == pytest.approx(top["scale"] * top["weight"] * top["input"], rel=1e-5)
    assert site["entries_needed"]["of_jump"] == 1


def test_trace_names_the_expert_and_the_fused_entry_and_zeroing_it_removes_the_site(moe_dir, tmp_path, capsys):
    family, folder, position = moe_dir
    out = tmp_path / "trace"
    argv = ["trace", str(folder), "--text-file", str(folder / "prompt.txt"), "--corpus", str(folder / "corpus.txt")]
    data = _json([*argv, "--samples", "2", "--seq-len", "32", "--out", str(out)], capsys)
    assert data == json.loads((out / "trace.json").read_text())
    assert data["prefix_tokens"] == (["63"] if family == "mixtral" else [])
    (site,) = data["sites"]
    _check_planted_trace(site, position)
    verification = data["verification"]
    assert verification["entries"] == [{"parameter": f"model.layers.{BLOCK}.mlp.experts.down_proj",
                                        "index": [EXPERT, DIM, UNIT]}]  # fmt: skip
    states = verification["states"]
    assert states["original"]["sites"][0]["massive"] and states["control"]["sites"][0]["massive"]
    assert not states["zeroed"]["sites"][0]["massive"] and states["zeroed"]["num_massive"] == 0
    assert states["restored"] == states["original"] and verification["restored_exact"]
    assert states["original"]["tokens"] == 2 * 31  # text tokens scored: the BOS is never a target
    assert f"[{EXPERT}, {DIM}, {UNIT}]" in (out / "report.md").read_text()


def test_trace_api_leaves_the_fused_weights_bit_identical(moe_dir):
    family, folder, position = moe_dir
    loaded: LoadedModel = load_model(str(folder), device="cpu")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    config = TraceConfig(samples=2, seq_len=32, corpus="corpus", progress=False)
    texts = [(folder / "corpus.txt").read_text()]
    result = trace_run(loaded, TraceInputs((folder / "prompt.txt").read_text(), texts), config)
    _check_planted_trace(result.to_json()["sites"][0], position)
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@torch.no_grad()
def test_trace_names_the_shared_expert_when_it_writes_the_jump():
    """Qwen2-MoE: the plant sits in the shared expert's dense down-projection; its sigmoid gate is the scale."""
    torch.manual_seed(0)
    model = qwen2_moe().eval()
    plant_moe(model, WORD)
    structure = find_structure(model)
    mlp = structure.mlp(BLOCK)
    down_rows(mlp.get_submodule(structure.moe(BLOCK).experts))[EXPERT, DIM, UNIT] = 0.0  # no routed writer
    shared = mlp.shared_expert
    for proj in (shared.gate_proj, shared.up_proj):
        proj.weight[UNIT] = 0.0
        proj.weight[UNIT, CARRIER] = 2.0
    shared.down_proj.weight[:, UNIT] = 0.0
    shared.down_proj.weight[DIM, UNIT] = GAIN
    loaded = LoadedModel(model=model, tokenizer=number_tokenizer(VOCAB), name="shared")
    config = TraceConfig(verify=False, risk=False)
    (site,) = trace_run(loaded, f"12 30 {WORD} 41 9 22", config).sites
    assert (site.token, site.dim, site.block, site.writer) == (2, DIM, BLOCK, "shared")
    assert site.module == f"model.layers.{BLOCK}.mlp.shared_expert.down_proj" and site.expert is None
    assert site.shared_update == pytest.approx(site.mlp_update - sum(e["update"] for e in site.experts))
    top = site.entries[0]
    assert (top.row, top.column, top.stored_index, top.weight) == (DIM, UNIT, [DIM, UNIT], GAIN)
    assert 0 < top.scale < 1  # sigmoid(shared_expert_gate(x)), measured, not assumed
    assert top.contribution == pytest.approx(top.scale * top.weight * top.input, rel=1e-5)
    assert site.module_output == pytest.approx(site.shared_update, rel=1e-5)


class _Expert(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(H, 8), torch.nn.Linear(8, H)


class _ListMoe(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.router = torch.nn.Linear(H, 3, bias=False)
        self.experts = torch.nn.ModuleList(_Expert() for _ in range(3))
        self.shared_experts = _Expert()


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = torch.nn.Linear(H, H)
        self.mlp = _ListMoe()


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_Block() for _ in range(2))


def test_experts_kept_as_a_list_are_found_too():
    structure = find_structure(_Model())
    assert structure.blocks_path == "layers" and structure.mlp_names == ["mlp", "mlp"]
    moe = structure.moe(1)
    assert moe == MoeParts(experts="experts", num_experts=3, fused=False, router="router", shared=("shared_experts",))


@pytest.mark.parametrize(("build", "mark"), [(mixtral, BOS), (qwen2_moe, WORD)])
def test_accelerator_capture_equals_the_direct_one_on_moe(build, mark):
    """The deferred (accelerator) capture path, forced on the CPU, gives the direct path's records on MoE blocks."""
    from planting import assert_same_records as _same_records

    from massact.capture.stats import capture_block_stats

    model = build()
    plant_moe(model, mark)
    structure = find_structure(model)
    ids = torch.randint(8, VOCAB - 1, (2, 24), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = mark
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    results = []
    for deferred in (True, False):
        with capture_block_stats(model, structure, keep=(BLOCK,), deferred=deferred) as collector, torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
            results.append(collector.pop())
    _same_records(*results)
    direct = results[1][0].blocks[BLOCK]
    assert (int(direct.massive_tokens[0]), int(direct.massive_dims[0])) == (0, DIM)
