"""GPT-2 variants against a naive reference, and the training loop: loss, resume, bad input."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch.nn import functional as F

from massact.errors import MassactError
from massact.models.loading import load_model
from massact.models.structure import find_structure
from massact.scan import ScanConfig, scan
from massact.train.checkpoint import CHECKPOINT, find_checkpoint, load_trained
from massact.train.data import TokenData, train_bpe_tokenizer
from massact.train.gpt2 import ATTENTION_VARIANTS, GPT2, SOFTPICK_EPS, GPT2Config
from massact.train.presets import TrainConfig, get_preset
from massact.train.trainer import make_optimizers, train

TEXT = "the cat sat on the mat. the dog ate the bone; a bird sang in the tree.\n" * 60


def tiny_config(attention: str = "default", **model) -> GPT2Config:
    return GPT2Config(**{"vocab_size": 300, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16,
                         "attention": attention, **model})  # fmt: skip


def random_model(attention: str) -> GPT2:
    torch.manual_seed(1)
    model = GPT2(tiny_config(attention)).eval()
    with torch.no_grad():  # make the extra parameters large enough to matter
        for name, param in model.named_parameters():
            if name.split(".")[-1] in ("bias", "k_bias", "v_bias", "sink_logit", "sink_token"):
                param.normal_(0, 1.0)
    return model


def naive_weights(attention: str, scores: torch.Tensor, sink: torch.Tensor | None) -> torch.Tensor:
    """Each variant's weights from its formula, on [B, T, S] scores with -inf where masked."""
    e = torch.exp(scores)  # exp(-inf) = 0: masked keys drop out of every sum
    if attention == "sink-logit":
        return e / (torch.exp(sink) + e.sum(-1, keepdim=True))
    if attention == "softmax1":
        return e / (1 + e.sum(-1, keepdim=True))
    if attention == "softpick":
        visible = torch.isfinite(scores)
        shifted = torch.where(visible, e - 1, torch.zeros_like(e))
        return shifted.clamp_min(0) / (shifted.abs().sum(-1, keepdim=True) + SOFTPICK_EPS)
    if attention == "sigmoid":
        return torch.where(torch.isfinite(scores), 1 / (1 + torch.exp(-(scores - math.log(scores.shape[-1])))), 0.0)
    return e / e.sum(-1, keepdim=True)


def naive_forward(model: GPT2, ids: torch.Tensor) -> torch.Tensor:
    """Logits written out by hand: every variant's weights from its formula, k'/v', sink token and gates included."""
    cfg = model.config
    tr = model.transformer
    x = tr.wte(ids)
    if cfg.attention == "sink-token":
        x = torch.cat([model.sink_token.expand(ids.shape[0], 1, -1), x], dim=1)
    x = x + tr.wpe(torch.arange(x.shape[1]))
    for block in tr.h:
        h = block.ln_1(x)
        q, k, v = block.attn.c_attn(h).split(cfg.n_embd, dim=2)
        heads = []
        for head in range(cfg.n_head):
            sl = slice(head * cfg.head_dim, (head + 1) * cfg.head_dim)
            qh, kh, vh = q[..., sl], k[..., sl], v[..., sl]
            n = x.shape[1]
            scores = qh @ kh.transpose(1, 2) / math.sqrt(cfg.head_dim)
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
            if cfg.attention == "attn-bias":
                kb, vb = block.attn.k_bias[head], block.attn.v_bias[head]
                extra = (qh @ kb / math.sqrt(cfg.head_dim)).unsqueeze(-1)  # every query sees k'
                scores = torch.cat([extra, scores], dim=-1)
                vh = torch.cat([vb.expand(x.shape[0], 1, -1), vh], dim=1)
            sink = block.attn.sink_logit[head] if cfg.attention == "sink-logit" else None
            out = naive_weights(cfg.attention, scores, sink) @ vh
            if cfg.attention == "gated":
                out = out * torch.sigmoid(block.attn.c_gate(h)[..., sl])
            elif cfg.attention == "gated-head":
                out = out * torch.sigmoid(block.attn.c_gate(h)[..., head : head + 1])
            heads.append(out)
        x = x + block.attn.c_proj(torch.cat(heads, dim=-1))
        x = x + block.mlp(block.ln_2(x))
    if cfg.attention == "sink-token":
        x = x[:, 1:]
    return tr.ln_f(x) @ tr.wte.weight.T


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_variants_equal_naive_reference_attention(attention):
    model = random_model(attention).double()
    ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fused = model(input_ids=ids).logits
        naive = naive_forward(model, ids)
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids).logits
    assert fused.shape == (3, 12, 300)
    torch.testing.assert_close(fused, naive, atol=1e-6, rtol=0)
    torch.testing.assert_close(eager, naive, atol=1e-6, rtol=0)


@pytest.mark.parametrize("level", [-200.0, -95.0, -3.0, 0.0, 3.0, 95.0])
def test_softpick_is_its_formula_in_float32_at_any_score_level(level):
    """Causal rows whose scores all lie near `level` (e^-level overflows float32 under -88): float32 softpick
    weights equal the float64 formula and their gradients are finite (under -88 they were NaN, which stopped
    softpick runs at lr 1e-2)."""
    from massact.train.variants import attention_weights

    generator = torch.Generator().manual_seed(0)
    scores = (level + 2 * torch.randn(2, 3, 6, 6, generator=generator)).requires_grad_()
    visible = torch.ones(6, 6, dtype=torch.bool).tril()
    weights = attention_weights("softpick", scores, visible)
    expected = naive_weights("softpick", scores.detach().double().masked_fill(~visible, -math.inf), None)
    torch.testing.assert_close(weights.double(), expected, atol=1e-6, rtol=1e-5)
    (weights * torch.randn(weights.shape, generator=generator)).sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_old_variant_names_load_as_the_new_ones():
    assert GPT2Config.from_dict({"attention": "sink", "n_layer": 1}).attention == "sink-token"
    assert GPT2Config.from_dict({"attention": "bias", "n_layer": 1}).attention == "attn-bias"


def test_bias_changes_the_output():
    """v' enters every head's output weighted by k''s probability: zeroing v' takes away exactly p' v', where
    p' = exp(q.k' / sqrt(d)) / (exp(q.k' / sqrt(d)) + sum_j exp(q.k_j / sqrt(d))), computed here by hand."""
    model = random_model("attn-bias").double()
    cfg, tr = model.config, model.transformer
    attn = tr.h[0].attn
    ids = torch.randint(0, 300, (1, 8), generator=torch.Generator().manual_seed(0))
    heads_out = []  # block 0's heads, concatenated: the input of its c_proj
    handle = attn.c_proj.register_forward_pre_hook(lambda m, a: heads_out.append(a[0]))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        v_bias = attn.v_bias.clone()
        for block in tr.h:
            block.attn.v_bias.zero_()
        after = model(input_ids=ids).logits
        handle.remove()
        h = tr.h[0].ln_1(tr.wte(ids) + tr.wpe(torch.arange(ids.shape[1])))
        q, k, _ = attn.c_attn(h).split(cfg.n_embd, dim=2)
        expected = []
        for head in range(cfg.n_head):
            sl = slice(head * cfg.head_dim, (head + 1) * cfg.head_dim)
            scores = (q[0, :, sl] @ k[0, :, sl].T / math.sqrt(cfg.head_dim)).exp().tril()  # causal keys
            extra = (q[0, :, sl] @ attn.k_bias[head] / math.sqrt(cfg.head_dim)).exp()
            expected.append((extra / (extra + scores.sum(-1)))[:, None] * v_bias[head])
    torch.testing.assert_close(heads_out[0] - heads_out[1], torch.cat(expected, -1)[None], atol=1e-12, rtol=1e-9)
    assert (after - before).abs().max() > 1e-3  # and the logits move with it


def test_sink_token_is_excluded_from_loss_and_outputs():
    model = random_model("sink-token")
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 10, 300)  # one logit row per text token, none for the sink
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    # the block outputs carry the sink at position 0; it sees only itself, so the text cannot change it
    structure = find_structure(model)
    seen = []
    hook = structure.blocks[1].register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    with torch.no_grad():
        model(input_ids=ids)
        model(input_ids=torch.flip(ids, [1]))
    hook.remove()
    assert seen[0].shape == (2, 11, 16)
    torch.testing.assert_close(seen[0][:, 0], seen[1][:, 0])
    assert not torch.allclose(seen[0][:, 1:], seen[1][:, 1:])


@pytest.mark.parametrize("attention", ["default", "sink-token", "attn-bias", "sink-logit", "gated"])
def test_structure_is_found_and_scan_sees_a_planted_activation(attention):
    model = random_model(attention)
    structure = find_structure(model)
    assert structure.blocks_path == "transformer.h"
    assert len(structure) == 2
    assert structure.attn_names == ["attn", "attn"] and structure.mlp_names == ["mlp", "mlp"]
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.bias[5] = 5000.0  # dim 5 of every token from block 1 on
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokenizer = train_bpe_tokenizer([TEXT], 300)
    result = scan(
        load_model(model, tokenizer=tokenizer), "the cat sat on the mat.", ScanConfig(add_special_tokens=False)
    )
    # on every token: an outlier feature (LLM.int8's kind), told apart from a few-token massive activation
    assert result.summary["dims"] == [] and result.summary["first_block"] is None
    (feature,) = result.summary["features"]
    assert (feature["dim"], feature["first_block"], feature["token_share"]) == (5, 1, 1.0)
    assert sorted(m.token for m in result.massive) == list(range(len(result.tokens)))  # block 1, every token
    assert all(m.block == 1 and m.dim == 5 and abs(m.value - 5000) < 50 for m in result.massive)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([TEXT], 300)


def tiny_train_config(**overrides) -> TrainConfig:
    fields = {
        "model": tiny_config(),
        "batch_size": 4,
        "grad_accum": 2,
        "max_steps": 6,
        "learning_rate": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 2,
        "eval_interval": 1,
        "eval_batches": 2,
        "monitor_interval": 3,
        "probe_sequences": 2,
        "checkpoint_interval": 100,
        "val_fraction": 0.2,
        **overrides,
    }
    return TrainConfig(**fields)


def token_data(tokenizer, config: TrainConfig) -> TokenData:
    return TokenData.from_texts([TEXT, TEXT.upper()], tokenizer, config)


def test_a_few_steps_lower_the_loss(tokenizer, tmp_path):
    config = tiny_train_config(max_steps=15, eval_interval=5)
    result = train(config, token_data(tokenizer, config), tmp_path / "run", progress=False)
    losses = [row["val_loss"] for row in result.val_log]
    assert [row["step"] for row in result.val_log] == [5, 10, 15]
    assert losses[0] > losses[1] > losses[2]
    assert losses[-1] < losses[0] - 0.2
    assert losses[0] < math.log(300)  # already below a uniform guess by step 5
    assert (tmp_path / "run" / "val_log.csv").read_text().count("\n") == 4
    model, loaded_tokenizer = load_trained(tmp_path / "run")
    assert model.config == config.model and len(loaded_tokenizer) == len(tokenizer)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_gives_the_same_next_steps(tokenizer, tmp_path, optimizer):
    config = tiny_train_config(optimizer=optimizer)
    data = token_data(tokenizer, config)
    straight = train(config, data, tmp_path / "straight", progress=False)
    train(config, data, tmp_path / "resumed", progress=False, stop_after=3)
    resumed = train(config, data, tmp_path / "resumed", progress=False, resume=True)
    assert [r["step"] for r in resumed.val_log] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight.val_log, resumed.val_log, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    assert [r["step"] for r in resumed.monitor_rows] == [r["step"] for r in straight.monitor_rows]
    a, _ = load_trained(tmp_path / "straight")
    b, _ = load_trained(tmp_path / "resumed")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)


def test_interrupted_run_keeps_its_checkpoint_and_resumes(tokenizer, tmp_path, monkeypatch):
    config = tiny_train_config(max_steps=6, checkpoint_interval=2)
    data = token_data(tokenizer, config)
    calls = {"n": 0}
    real_batch = data.batch

    def interrupting_batch(*args):
        calls["n"] += 1
        if calls["n"] == 2 * 5 + 1:  # first micro-batch of step 6 (2 micro-batches per step)
            raise KeyboardInterrupt
        return real_batch(*args)

    monkeypatch.setattr(data, "batch", interrupting_batch)
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        train(config, data, tmp_path / "run", progress=False)
    monkeypatch.setattr(data, "batch", real_batch)
    checkpoint = find_checkpoint(tmp_path / "run")
    assert checkpoint is not None and checkpoint.name == CHECKPOINT
    result = train(config, data, tmp_path / "run", progress=False, resume=True)
    assert result.step == 6 and [r["step"] for r in result.val_log] == [1, 2, 3, 4, 5, 6]


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT2(tiny_config("attn-bias"))
    muon, adamw = make_optimizers(model, tiny_train_config(optimizer="muon"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in in_muon}
    per_block = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    assert names == {f"transformer.h.{i}.{n}" for i in range(2) for n in per_block}  # not wte, wpe, k', v'
    in_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert in_muon.isdisjoint(in_adamw) and len(in_muon | in_adamw) == len(list(model.parameters()))
    assert [len(opt) for opt in (make_optimizers(model, tiny_train_config()),)] == [1]


def test_checkpoint_left_mid_swap_is_found(tokenizer, tmp_path):
    config = tiny_train_config(max_steps=2)
    train(config, token_data(tokenizer, config), tmp_path / "run", progress=False)
    os.replace(tmp_path / "run" / CHECKPOINT, tmp_path / "run" / f".{CHECKPOINT}.old")
    assert find_checkpoint(tmp_path / "run").name == f".{CHECKPOINT}.old"


def test_resume_with_another_config_and_existing_checkpoint_are_refused(tokenizer, tmp_path):
    config = tiny_train_config(max_steps=2)
    data = token_data(tokenizer, config)
    train(config, data, tmp_path / "run", progress=False)
    with pytest.raises(MassactError, match="already holds a checkpoint"):
        train(config, data, tmp_path / "run", progress=False)
    other = tiny_train_config(max_steps=2, model=tiny_config(n_layer=3))
    with pytest.raises(MassactError, match="another config.*n_layer 2 != 3"):
        train(other, data, tmp_path / "run", progress=False, resume=True)


def test_corpus_too_small_for_one_batch(tokenizer):
    with pytest.raises(MassactError, match="corpus is too small"):
        TokenData.from_texts(["a few words only"], tokenizer, tiny_train_config())


def test_presets():
    small = get_preset("cpu-small", attention="bias", seed=3)
    assert small.model.attention == "attn-bias" and small.seed == 3
    big = get_preset("gpt2-124m")
    cfg = big.model  # counted, not built: 124M parameters would take seconds to initialise
    blocks = cfg.n_layer * (12 * cfg.n_embd**2 + 13 * cfg.n_embd)
    embeddings = cfg.vocab_size * cfg.n_embd + cfg.n_positions * cfg.n_embd
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 12, 768, 1024)
    assert 115e6 < blocks + embeddings < 130e6
    with pytest.raises(MassactError, match="unknown preset"):
        get_preset("huge")
    from massact.defaults import TRAIN_PRESETS
    from massact.train.presets import PRESET_TARGETS, PRESETS

    assert tuple(PRESETS) == TRAIN_PRESETS and set(PRESET_TARGETS) == set(PRESETS)  # the CLI's list, every target
    assert (
        get_preset("backcopy-llama").model.arch == "llama"
        and get_preset("backcopy-llama", arch="gpt2").model.arch == "gpt2"
    )
    with pytest.raises(MassactError, match="unknown attention variant"):
        get_preset("cpu-small", attention="alibi")


@pytest.mark.parametrize("attention", ["default", "sink-token", "attn-bias", "gated"])
def test_attention_interface_route_equals_fused_sdpa(attention):
    """Through transformers' attention interface (as `massact attention` captures it) the model is unchanged."""
    from massact.attention.capture import capture_attention

    model = random_model(attention)
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    calls = []
    with torch.no_grad():
        fused = model(input_ids=ids).logits
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids).logits
        model.set_attn_implementation("sdpa")
        with capture_attention(model, find_structure(model), calls.append):
            captured = model(input_ids=ids).logits
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(eager, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(captured, fused, atol=1e-5, rtol=1e-5)
    positions = 9 + (attention == "sink-token")
    keys = positions + (attention == "attn-bias")
    assert [c.block for c in calls] == [0, 1]
    probs = calls[0].probs
    assert probs.shape == (2, 2, positions, keys)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, positions))
    assert bool((probs[..., :positions].triu(1) == 0).all())  # causal over the real keys
    if attention == "attn-bias":
        assert bool((probs[..., -1] > 0).all())  # k' is seen by every query
    with pytest.raises(ValueError, match="unknown attention implementation"):
        model.set_attn_implementation("nonexistent")
