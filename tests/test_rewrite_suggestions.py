"""Every `massact rewrite` the atlas suggests is one the rewrite accepts for that model, each with its own --out:
the suggestions for planted Gemma-3 (sandwich norms: no rotation), LLaMA and Qwen2, pasted and run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from cli_runner import run as run_cli
from cli_runner import run_captured
from planting import MARK, VOCAB, plant_massive, plant_sandwich, tiny_model, word_tokenizer

from massact.residual import suggest

FAMILIES = ("gemma3", "llama", "qwen2")
FLAGS = {"--rescale": "rescale", "--smooth": "smooth", "--rotate": "rotate"}


def _word(i: int) -> str:
    return f"w{i}"


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> tuple[dict, dict[str, Path], Path]:
    """One atlas (scan and quant) over the three planted models: (atlas.json, model folders, corpus)."""
    root = tmp_path_factory.mktemp("suggest")
    folders = {}
    for family in FAMILIES:
        model = tiny_model(family)
        if family == "gemma3":
            plant_sandwich(model, block=1, dim=4, value=1.1e5)
        else:
            plant_massive(model, block=1, dim=4, gain=300.0)  # far above the float16 maximum
        folders[family] = root / family
        model.save_pretrained(folders[family])
        word_tokenizer(_word, bos=True).save_pretrained(folders[family])
    corpus = root / "corpus.txt"
    words = torch.randint(10, VOCAB, (3000,), generator=torch.Generator().manual_seed(1))
    corpus.write_text(" ".join(_word(int(i)) for i in words if int(i) != MARK), encoding="utf-8")
    out = root / "atlas"
    argv = ["atlas", *(str(folders[f]) for f in FAMILIES), "--corpus", str(corpus), "--samples", "2"]
    argv += ["--seq-len", "32", "--prompt", "w11 w12 w13 w14", "--steps", "scan,quant", "--out", str(out)]
    code, _, stderr = run_captured(argv)
    assert code == 0, stderr
    return json.loads((out / "atlas.json").read_text()), folders, corpus


def _suggestions(atlas_json: dict, folders: dict[str, Path], monkeypatch) -> dict[str, list[str]]:
    """The commands atlas.md suggests per family, with every W8A8 cost counted as high (random tiny models
    predict nearly uniformly, so int8 noise costs them little): both suggestions, rescale and int8."""
    from massact.atlas import result as atlas_result
    from massact.atlas.config import AtlasConfig
    from massact.atlas.result import AtlasResult

    monkeypatch.setattr(atlas_result, "W8A8_COSTLY", 0.0)
    result = AtlasResult(rows=atlas_json["models"], config=AtlasConfig())
    found = {}
    for family, line in zip(FAMILIES, result.rewrite_lines()):
        assert line.startswith(str(folders[family])), line
        found[family] = [part for part in line.split("`")[1::2] if part.startswith("massact rewrite")]
    return found


def test_the_atlas_records_which_rewrites_each_model_accepts(atlas):
    data, folders, _ = atlas
    rows = {family: row for family, row in zip(FAMILIES, data["models"])}
    assert "sandwich" in rows["gemma3"]["rewrites"]["rotate"]
    for family in FAMILIES:
        accepted = {k for k, why in rows[family]["rewrites"].items() if why is None}
        assert accepted == ({"rescale", "smooth", "check_quant"} | ({"rotate"} if family != "gemma3" else set()))
        assert rows[family]["headroom"]["fp16"]["first_overflow_block"] is not None, "the plant must overflow"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_suggested_rewrite_is_accepted_and_writes_where_it_says(atlas, family, tmp_path, capsys, monkeypatch):
    data, folders, corpus = atlas
    commands = _suggestions(data, folders, monkeypatch)[family]
    assert len(commands) == 2 and "--rescale auto" in commands[0], commands  # the plant overflows float16
    int8 = "--smooth 0.5 --check-quant w8a8" if family == "gemma3" else "--rotate --check-quant w8a8"
    assert int8 in commands[1], commands
    outs = [shlex.split(c)[shlex.split(c).index("--out") + 1] for c in commands]
    assert len(set(outs)) == len(outs), outs
    monkeypatch.chdir(tmp_path)
    for text, out in zip(commands, outs):
        words = shlex.split(text)
        assert words[:3] == ["massact", "rewrite", str(folders[family])]
        code, _, stderr = run_cli([*words[1:], "--corpus", str(corpus), "--seq-len", "32"], capsys)
        assert code == 0, f"{text}: {stderr}"
        written = json.loads((tmp_path / out / "rewrite.json").read_text())
        assert [step["kind"] for step in written["rewrites"]] == [FLAGS[w] for w in words if w in FLAGS]
        assert (written["check_quant"] is not None) == ("--check-quant" in words)


def test_an_int8_suggestion_rotates_where_the_model_takes_it_and_smooths_where_not():
    sandwich = {"rescale": None, "smooth": None, "rotate": "--rotate: sandwich post-norms", "check_quant": None}
    command, why = suggest.for_int8("org/gemma", sandwich)
    assert "--smooth 0.5 --check-quant w8a8" in command and "--rotate" not in command and why is None
    rotate, _ = suggest.for_int8("org/llama", dict(sandwich, rotate=None))
    assert "--rotate --check-quant w8a8" in rotate
    command, why = suggest.for_int8("m", dict(sandwich, smooth="--smooth: no norm"))
    assert command is None and "sandwich" in why and "no norm" in why
    blocks = dict(sandwich, rotate=None, check_quant="--check-quant is not available under block execution")
    assert "--check-quant" not in suggest.for_int8("m", blocks)[0]
    assert suggest.for_headroom("m", 9.0, True, dict(sandwich, rescale="--rescale: no final norm")) is None
    rescale = suggest.for_headroom("m", 9.0, True, sandwich)
    assert rescale.endswith("--out m-rescaled") and rotate.endswith("--out llama-rotated")
