"""The atlas finds its steps in a registry: it runs what is registered, in order, and records each step's fields."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from planting import letter_word, planted_with_words

import massact.atlas
from massact.atlas import AtlasConfig, atlas_step
from massact.atlas.model_run import NOT_RUN
from massact.atlas.registry import _STEPS, register_step, registered_steps, step_names, unregister_step
from massact.atlas.result import cells
from massact.defaults import ATLAS_STEPS

PROMPT = " ".join(letter_word(i) for i in range(3, 15))  # MARK (7) among them
ROW_FIELDS = ("massive", "block_peak_ratio", "headroom", "constancy", "super_weights", "sink_heads", "w8a8")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A planted tiny LLaMA (block 1 writes dim 4) with a word tokenizer, saved."""
    folder = tmp_path_factory.mktemp("registry-model")
    loaded = planted_with_words("llama")
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return str(folder)


def _row(model_dir: str, steps: tuple[str, ...] | None = None) -> dict:
    config = AtlasConfig(prompt=PROMPT) if steps is None else AtlasConfig(prompt=PROMPT, steps=steps)
    (row,) = massact.atlas.run([model_dir], None, config).rows
    assert row["status"] == "ok", row
    return row


def test_the_registry_lists_the_steps_the_atlas_runs_in_order(model_dir, monkeypatch):
    assert step_names() == AtlasConfig().steps
    assert step_names() == ATLAS_STEPS, "name a new built-in step in defaults.ATLAS_STEPS: `atlas --help` lists them"
    fields = [f for step in registered_steps() for f in step.fields]
    assert fields == list(ROW_FIELDS)  # every field the table reads, each filled by one step
    ran = []

    def recorder(name: str):
        def run(ctx) -> dict:
            ran.append(name)
            raise RuntimeError(f"{name} recorded")

        return run

    for step in registered_steps():
        monkeypatch.setitem(_STEPS, step.name, dataclasses.replace(step, run=recorder(step.name)))
    row = _row(model_dir)
    assert ran == list(ATLAS_STEPS)
    assert list(row)[-len(ROW_FIELDS) - 1 : -1] == list(ROW_FIELDS)  # the row's fields in step order
    for step in registered_steps():
        for name in step.fields:
            assert row[name] is None and row["reasons"][name] == f"{step.name}: RuntimeError: {step.name} recorded"


def test_a_registered_step_runs_and_fills_its_fields(model_dir):
    seen = {}

    @atlas_step("dummy", fields=("dummy_dims", "dummy_prompt"), after=("quant",))
    def dummy(ctx) -> dict:
        seen["scan"] = ctx.scan is not None
        return {"dummy_dims": ctx.scan["summary"]["dims"], "dummy_prompt": ctx.config.prompt}

    try:
        assert step_names() == (*ATLAS_STEPS, "dummy") and AtlasConfig().steps[-1] == "dummy"
        row = _row(model_dir, ("scan", "dummy"))
        assert seen == {"scan": True}  # the context carries what the steps before it left
        assert row["dummy_dims"] == row["massive"]["dims"] == [4] and row["dummy_prompt"] == PROMPT
        assert "dummy_dims" not in row["reasons"]
        assert row["reasons"]["w8a8"] == f"quant: {NOT_RUN}"
        assert len(cells(row)) == len(cells({**row, "dummy_dims": None}))  # the table takes the row as it is
        skipped = _row(model_dir, ("scan",))
        assert skipped["dummy_dims"] is None and skipped["reasons"]["dummy_prompt"] == f"dummy: {NOT_RUN}"
    finally:
        unregister_step("dummy")
    assert step_names() == ATLAS_STEPS
    with pytest.raises(massact.MassactError, match="`steps='dummy'`: unknown"):
        AtlasConfig(steps=("dummy",))


def test_a_step_whose_analysis_does_not_import_is_null_with_the_reason(model_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "massact.attention", None)  # as if the package were not installed
    result = massact.atlas.run([model_dir], None, AtlasConfig(prompt=PROMPT, steps=("scan", "attention")))
    (row,) = result.rows
    assert row["status"] == "ok" and row["massive"]["dims"] == [4]
    assert row["sink_heads"] is None
    reason = row["reasons"]["sink_heads"]
    assert reason.startswith("attention: RuntimeError: massact.attention is not available (import of massact.attention")
    result.write(tmp_path / "atlas")  # the failed step leaves no run folder
    assert sorted(p.name for p in Path(tmp_path / "atlas", Path(model_dir).name).iterdir()) == ["row.json", "scan"]


def test_steps_come_after_the_steps_they_name():
    try:
        register_step("late", lambda ctx: {}, ("late_field",), after=("early",))
        register_step("early", lambda ctx: {}, ("early_field",), after=("scan",))
        assert step_names() == (*ATLAS_STEPS, "early", "late")
        register_step("scan_again", lambda ctx: {}, (), after=("nosuch",))
        with pytest.raises(RuntimeError, match="come after steps nobody registered: nosuch"):
            step_names()
        register_step("scan_again", lambda ctx: {}, (), after=("late",))
        register_step("early", lambda ctx: {}, ("early_field",), after=("scan_again",))
        with pytest.raises(RuntimeError, match="wait on each other: late, early, scan_again"):
            step_names()
    finally:
        for name in ("late", "early", "scan_again"):
            unregister_step(name)
    assert step_names() == ATLAS_STEPS
