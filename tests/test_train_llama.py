"""The LLaMA-shaped lab model: equal to transformers' LLaMA, its designs from one registry, its knobs, its measures."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from massact.defaults import ATTENTION_VARIANTS
from massact.errors import MassactError
from massact.train.build import build_model
from massact.train.config import ModelConfig, TrainConfig
from massact.train.monitor import probe_statistics
from massact.train.presets import get_preset
from massact.train.trainer import make_optimizers, make_scheduler, norm_gains
from massact.train.variants import VARIANTS, Variant, register

SHAPE = {"vocab_size": 48, "block_size": 24, "n_layer": 2, "n_head": 2, "n_embd": 16}


def llama(attention: str = "default", **shape) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SHAPE, **shape}, attention=attention, arch="llama"))


def test_default_equals_transformers_llama():
    """Logits and every block output equal LlamaForCausalLM's with the same weights (float64, 1e-6)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ours = llama().double().eval()
    with torch.no_grad():  # gains away from 1, so a swapped or missing gain shows
        for name, param in ours.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                param.uniform_(0.5, 1.5)
    fields = {k: v for k, v in ours.hf_config().items() if k not in ("model_type", "architectures")}
    theirs = LlamaForCausalLM(LlamaConfig(**fields)).double().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, 48, (3, 20), generator=torch.Generator().manual_seed(1))
    hidden = []
    with torch.no_grad():
        expected = theirs(input_ids=ids, output_hidden_states=True)
        handles = [block.register_forward_hook(lambda m, a, o: hidden.append(o)) for block in ours.blocks]
        got = ours(input_ids=ids)
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-6, rtol=0)
    for index, block_output in enumerate(hidden[:-1]):  # the last hidden state is after the final norm
        torch.testing.assert_close(block_output, expected.hidden_states[index + 1], atol=1e-6, rtol=0)


def test_registry_names_what_the_cli_lists():
    assert tuple(VARIANTS) == ATTENTION_VARIANTS


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_new_design_is_one_registry_entry(arch):
    """A design registered here (uniform weights over the visible keys) runs on both architectures: each
    attention output is the running mean of the values, computed directly."""

    def uniform(scores, visible, logit):
        weights = visible.expand(scores.shape).to(scores.dtype)
        return weights / weights.sum(dim=-1, keepdim=True)

    register(Variant("uniform-test", "mean of the visible values", uniform))
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig(**SHAPE, attention="uniform-test", arch=arch)).double().eval()
        attention = model.blocks[0].self_attn if arch == "llama" else model.blocks[0].attn
        seen = {}
        attention.register_forward_hook(lambda m, a, o: seen.update(x=a[0], out=o))
        ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            model(ids)
            x = seen["x"]
            if arch == "llama":
                values, project = attention.v_proj(x), attention.o_proj
            else:
                values, project = attention.c_attn(x).split(16, dim=2)[2], attention.c_proj
            running = values.cumsum(dim=1) / torch.arange(1, 13, dtype=values.dtype).view(1, -1, 1)
        torch.testing.assert_close(seen["out"], project(running), atol=1e-6, rtol=0)  # weights in float32
    finally:
        del VARIANTS["uniform-test"]
    with pytest.raises(MassactError, match="unknown attention variant 'uniform-test'"):
        ModelConfig(attention="uniform-test")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_single_scale_norm_has_one_gain_per_norm(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, attention="single-scale-norm", arch=arch))
    gains = [p for p in model.parameters() if id(p) in norm_gains(model)]
    assert len(gains) == 2 * SHAPE["n_layer"] + 1 and all(g.shape == (1,) for g in gains)
    with torch.no_grad():
        for gain in gains:
            gain.fill_(2.0)
    ids = torch.randint(0, 48, (1, 8), generator=torch.Generator().manual_seed(3))
    norm = model.model.norm if arch == "llama" else model.transformer.ln_f
    x = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(4))
    if arch == "llama":
        expected = 2.0 * x / x.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).sqrt()
    else:
        expected = 2.0 * torch.nn.functional.layer_norm(x, (16,), None, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("decay_gains", [False, True])
def test_weight_decay_reaches_norm_gains_only_when_asked(arch, decay_gains):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, arch=arch))
    config = TrainConfig(model=model.config, weight_decay=0.1, decay_norm_gains=decay_gains)
    (optimizer,) = make_optimizers(model, config)
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    gains = norm_gains(model)
    assert len(gains) == 2 * SHAPE["n_layer"] + 1
    assert (gains <= decayed) == decay_gains and (gains.isdisjoint(decayed)) != decay_gains
    matrices = {id(p) for p in model.parameters() if p.dim() >= 2}
    assert matrices <= decayed


def test_constant_schedule_holds_the_peak_after_warm_up():
    model = llama()
    config = TrainConfig(model=model.config, learning_rate=1e-2, warmup_steps=4, max_steps=20, schedule="constant")
    (optimizer,) = make_optimizers(model, config)
    scheduler = make_scheduler(optimizer, config)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.0, 2.5e-3, 5e-3, 7.5e-3]) and rates[4:] == pytest.approx([1e-2] * 16)


def test_muon_takes_the_llama_blocks_matrices():
    model = llama()
    muon, adamw = make_optimizers(model, TrainConfig(model=model.config, optimizer="muon"))
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    block_linears = {id(m.weight) for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)}
    assert in_muon == block_linears and len(block_linears) == 7 * SHAPE["n_layer"]
    rest = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert id(model.lm_head.weight) in rest and id(model.model.embed_tokens.weight) in rest


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_top_entry_measures_against_a_direct_computation(arch):
    """A planted BOS entry (dim 5) and a planted token (id 7, dim 11): where each sequence's top entry is."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, arch=arch)).eval()
    embedding = model.model.embed_tokens if arch == "llama" else model.transformer.wte
    with torch.no_grad():
        embedding.weight[0, 5] = 400.0  # BOS
        embedding.weight[7, 11] = 900.0  # token 7, larger: wins where it appears
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(8, 48, (6, 16), generator=generator)
    ids[:, 0] = 0
    ids[1, 9] = ids[4, 3] = 7
    rows = probe_statistics(model, ids)
    outputs = []
    handles = [block.register_forward_hook(lambda m, a, o: outputs.append(o)) for block in model.blocks]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    for row, hidden in zip(rows, outputs, strict=True):
        flat = hidden.abs().flatten(1).argmax(dim=1)
        tokens, dims = (flat // 16).tolist(), (flat % 16).tolist()
        assert tokens == [0, 9, 0, 0, 3, 0] and dims == [5, 11, 5, 5, 11, 5]
        assert row["top1_on_bos"] == pytest.approx(4 / 6)
        assert row["top1_dim"] == 5 and row["dim_constancy"] == pytest.approx(4 / 6)
        assert row["top1"] == pytest.approx(float(hidden.abs().max()), rel=1e-6)


def test_the_summary_takes_every_top_entry_measure_from_one_block():
    """Block 0 has the largest entry against its median (on ordinary tokens), block 1 the largest |x| (on BOS):
    the summary's ratio, |x|, token and dim all come from block 0, never mixed across blocks."""
    from massact.train.measures import summarize_blocks
    from massact.train.run_report import run_verdict

    def row(block, top1, median, on_bos, dim):
        return {"block": block, "top1": top1, "ratio": top1 / median, "top1_on_bos": on_bos, "top1_dim": dim,
                "dim_constancy": 1.0, "head_first_attention": [0.9, 0.1], "residual_peak": 1.0,
                "value_drain": 1.0, "kurtosis": 0.0}  # fmt: skip

    rows = [row(0, 900.0, 3.0, 0.0, 7), row(1, 4000.0, 40.0, 1.0, 2)]
    summary = summarize_blocks(rows)
    assert summary["top1_median"] == 300.0 and summary["top1"] == 900.0 and summary["top1_block"] == 0
    assert summary["top1_on_bos"] == 0.0 and summary["top1_dim"] == 7 and summary["sink_rate"] == 0.5
    # the run's own verdict line describes the same block
    verdict = run_verdict(rows)
    assert "block 0: |x| 900.0, 300x the median, dim 7" in verdict and "on BOS in 0%" in verdict


def test_trained_default_checkpoint_is_a_transformers_folder_and_scans_as_monitored(tmp_path):
    """`massact train llama` default: the checkpoint loads with LlamaForCausalLM; `massact scan` of the probe
    finds the monitor's final top entry in every block."""
    from transformers import LlamaForCausalLM

    from massact.models.loading import load_model
    from massact.scan import ScanConfig, run
    from massact.train import run as train_run

    config = get_preset("backcopy-test", max_steps=6)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch="llama"))
    result = train_run(config, tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run" / "checkpoint"
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "llama"
    theirs = LlamaForCausalLM.from_pretrained(checkpoint).eval()
    loaded = load_model(str(tmp_path / "run"), dtype="float32", device="cpu")
    ids = torch.randint(1, 16, (2, 12), generator=torch.Generator().manual_seed(6))
    ids[:, 0] = 0
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, loaded.model(ids).logits, atol=1e-5, rtol=0)
    from massact.train.backcopy import BackcopyData, BackcopyTask

    probe = BackcopyData(BackcopyTask(16, 2, 0.5, 0)).windows(config.probe_sequences, config.model.block_size)
    final = result.final_blocks
    for sequence in range(len(probe)):
        scan = run(loaded, probe[sequence : sequence + 1], ScanConfig(top_k=1)).to_json()
        for block, row in zip(scan["blocks"], final, strict=True):
            assert block["top"][0]["magnitude"] <= row["top1"] * (1 + 1e-6)
    best = max(final, key=lambda r: r["top1"])
    scans = [run(loaded, probe[i : i + 1], ScanConfig(top_k=1)).to_json() for i in range(len(probe))]
    largest = max(s["blocks"][best["block"]]["top"][0]["magnitude"] for s in scans)
    assert largest == pytest.approx(best["top1"], rel=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_design_trains_and_its_run_writes_a_report(arch, tmp_path):
    from massact.train import run as train_run

    for attention in ("default", "attn-bias", "single-scale-norm"):
        config = get_preset("backcopy-test", attention=attention, max_steps=4)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch))
        out = tmp_path / f"{arch}-{attention}"
        result = train_run(config, out, progress=False)
        result.write(out)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["config"]["model"]["arch"] == arch and summary["step"] == 4
        site = max(result.final_blocks, key=lambda b: b["ratio"])
        assert summary["final"]["top1"] == site["top1"] and summary["final"]["top1_median"] == site["ratio"]
        report = (out / "report.md").read_text()
        assert f"# {arch} {attention} on bigram-backcopy" in report and "massive activation" in report
        assert (out / "report.html").is_file() and (out / "figures" / "top1.png").is_file()


def test_a_diverged_run_reads_back_with_its_non_finite_measures(tmp_path):
    """A run whose loss went NaN (too high a learning rate) is read back, not refused: state.json's
    "nan" / "inf" strings return as floats and the experiment's summaries take them."""
    import math

    from massact.outputs import write_json
    from massact.train.checkpoint import read_state
    from massact.train.measures import summarize_blocks

    rows = [
        {"step": 10, "block": 0, "top1": math.nan, "ratio": math.inf, "head_first_attention": [math.nan, 0.5],
         "residual_peak": math.nan, "value_drain": math.nan, "kurtosis": math.nan,
         "top1_on_bos": 0.0, "top1_dim": 0, "dim_constancy": 1.0}
    ]  # fmt: skip
    write_json(tmp_path / "state.json", {"step": 10, "val_log": [{"val_loss": math.nan}], "monitor_rows": rows})
    state = read_state(tmp_path)
    assert math.isnan(state["val_log"][0]["val_loss"]) and state["monitor_rows"][0]["ratio"] == math.inf
    summary = summarize_blocks(state["monitor_rows"])
    assert summary["sink_rate"] == 0.5 and math.isnan(summary["top1"]) and summary["top1_median"] == math.inf


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_training_stops_at_the_first_non_finite_loss(arch, tmp_path, monkeypatch):
    """From the third loss on the loss is NaN: the run measures, checkpoints and stops at step 3, says so in its
    summary and report, and a resume reads it back without training."""
    from torch.nn import functional

    from massact.train import run as train_run
    from massact.train.lm import LabModel

    original, calls = functional.cross_entropy, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr("massact.train.lm.F.cross_entropy", poisoned)
    config = get_preset("backcopy-test", arch=arch)
    result = train_run(config, tmp_path / "run", progress=False)
    assert result.step == 3 and result.diverged_at == 3
    result.write(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["diverged_at"] == 3
    assert "**Diverged**" in (tmp_path / "run" / "report.md").read_text()
    assert max(r["step"] for r in result.monitor_rows) == 3  # the diverged model was measured

    def no_training(*args, **kwargs):
        raise AssertionError("a diverged run was trained again")

    monkeypatch.setattr(LabModel, "forward", no_training)
    again = train_run(config, tmp_path / "run", resume=True, progress=False)
    assert again.step == 3 and again.diverged_at == 3
