"""The training monitor: its numbers equal plain torch statistics; it works in a plain loop and as a TrainerCallback."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import TrainerControl, TrainerState

from massact.capture.stats import capture_block_stats
from massact.models.structure import find_structure
from massact.train.data import train_bpe_tokenizer
from massact.train.gpt2 import GPT2, GPT2Config
from massact.train.monitor import ActivationMonitor, probe_statistics

TEXT = "the cat sat on the mat. the dog ate the bone; a bird sang in the tree.\n" * 40
PLANT_BLOCK, PLANT_DIM, PLANT_VALUE = 1, 9, 3000.0


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([TEXT], 300)


def planted_model(attention: str = "default") -> GPT2:
    """Tiny GPT-2 whose block 1 writes PLANT_VALUE into dim PLANT_DIM of every token."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, block_size=32, n_layer=3, n_head=2, n_embd=16, attention=attention)
    model = GPT2(config)
    with torch.no_grad():
        model.transformer.h[PLANT_BLOCK].mlp.c_proj.bias[PLANT_DIM] = PLANT_VALUE
    return model.train()


def block_outputs(model: GPT2, ids: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output [tokens, dims] on one sequence, kept by plain forward hooks in eval mode."""
    kept: list[torch.Tensor] = []
    handles = [
        block.register_forward_hook(lambda m, a, out: kept.append(out[0].detach())) for block in model.transformer.h
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return kept


@pytest.mark.parametrize("attention", ["default", "sink-token", "attn-bias"])
def test_monitor_equals_plain_torch_statistics(tokenizer, attention):
    model = planted_model(attention)
    ids = tokenizer("the dog sat on the bone.", add_special_tokens=False, return_tensors="pt")["input_ids"]
    rows = probe_statistics(model, ids)
    assert model.training  # mode restored
    outputs = block_outputs(model, ids)
    assert len(rows) == len(outputs) == 3
    for row, hidden in zip(rows, outputs, strict=True):
        magnitudes = hidden.abs()
        top = int(magnitudes.argmax())
        median = float(magnitudes.flatten().median())  # the lower median, as the monitor's
        assert row["top1"] == float(magnitudes.max())
        assert row["median"] == median
        assert row["ratio"] == pytest.approx(float(magnitudes.max()) / median)
        assert (row["top_token"], row["top_dim"]) == divmod(top, hidden.shape[1])
        assert row["num_massive"] == int(((magnitudes > 100) & (magnitudes >= 1000 * median)).sum())
    assert [r["top_dim"] for r in rows[PLANT_BLOCK:]] == [PLANT_DIM] * (3 - PLANT_BLOCK)
    assert rows[PLANT_BLOCK]["ratio"] > 1000 and rows[0]["num_massive"] == 0
    tokens = ids.shape[1] + (1 if attention == "sink-token" else 0)
    assert rows[PLANT_BLOCK]["num_massive"] == tokens  # the plant is on every token


def test_monitor_batch_aggregates_per_sequence_records():
    model = planted_model().eval()
    with torch.no_grad():
        model.transformer.h[2].mlp.c_proj.bias[PLANT_DIM] = 0.0
    probe = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(0))
    rows = probe_statistics(model, probe)
    structure = find_structure(model)
    singles = []
    for sequence in probe:  # each sequence scanned on its own
        with capture_block_stats(model, structure, top_k=1) as collector, torch.no_grad():
            model(input_ids=sequence[None])
            singles.append(collector.pop()[0])
    for block, row in enumerate(rows):
        records = [s.blocks[block] for s in singles]
        assert row["top1"] == pytest.approx(max(float(r.top_magnitudes[0]) for r in records), rel=1e-6)
        assert row["median"] == pytest.approx(sum(r.median for r in records) / 3, rel=1e-6)
        assert row["num_massive"] == sum(int(r.massive_values.numel()) for r in records)


def test_plain_loop_and_files(tmp_path):
    model = planted_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    monitor = ActivationMonitor(probe, every=5, out_dir=tmp_path, tensorboard=False)
    recorded = [step for step in range(12) if monitor.step(model, step) is not None]
    assert recorded == [0, 5, 10]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with (tmp_path / "monitor.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 3
    data = json.loads((tmp_path / "monitor.json").read_text())
    assert [e["step"] for e in data["emergence"]] == [0, 5, 10]
    assert all(e["block"] >= PLANT_BLOCK and e["top1"] > PLANT_VALUE * 0.9 for e in data["emergence"])


def test_trainer_callback_records_on_due_steps():
    model = planted_model()
    probe = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    monitor = ActivationMonitor(probe, every=10, tensorboard=False)
    callback = monitor.trainer_callback()
    control = TrainerControl()
    for step in (9, 10, 11, 20):
        callback.on_step_end(None, TrainerState(global_step=step), control, model=model)
    assert sorted({r["step"] for r in monitor.rows}) == [10, 20]
    assert len(monitor.rows) == 2 * 3
