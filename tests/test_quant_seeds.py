"""quant over several seeds (mean and spread), its progress messages, one default seed, and GGUF weight types."""

from __future__ import annotations

import inspect
import statistics

import numpy as np
import pytest
import torch
from cli_runner import run as run_cli
from planting import MARK, VOCAB, letter_word, planted_with_words

from massact.models.loading import gguf_quantization, gguf_weight_types
from massact.quant import QuantConfig, load_inputs, run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("seeds") / "words.txt"
    ids = torch.randint(10, VOCAB, (1200,), generator=torch.Generator().manual_seed(3))
    ids[::11] = MARK
    path.write_text(" ".join(letter_word(int(i)) for i in ids), encoding="utf-8")
    return str(path)


CONFIG = QuantConfig(schemes=("W8A8",), strategies=("none", "outlier-tokens", "best"), sensitivity=None, progress=False)


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_seeds_repeat_the_whole_measurement_on_each_draw(family, corpus):
    loaded = planted_with_words(family)
    result = run(loaded, load_inputs(loaded, corpus, 2, 16, 2, seed=3, seeds=3), CONFIG).to_json()
    spread = result["seeds"]
    assert spread["seeds"] == [3, 4, 5] and result["seed"] == 3
    alone = [run(loaded, load_inputs(loaded, corpus, 2, 16, 2, seed=s), CONFIG).to_json() for s in (3, 4, 5)]
    assert spread["baseline"]["values"] == [a["baseline"]["perplexity"] for a in alone]
    for index, row in enumerate(spread["rows"]):
        values = [a["rows"][index]["perplexity"] for a in alone]
        assert row["perplexity"]["values"] == values  # each seed's own run: calibration and `best` included
        assert row["perplexity"]["mean"] == pytest.approx(statistics.fmean(values))
        assert row["perplexity"]["std"] == pytest.approx(float(np.std(values, ddof=1)))
        assert row["ratio"]["values"] == [a["rows"][index]["ratio"] for a in alone]
    assert spread["rows"][2]["chosen"] == [a["rows"][2]["chosen"] for a in alone]
    assert result["rows"] == alone[0]["rows"]  # the table's own columns are the first seed's


def test_cli_seeds_and_progress_say_what_each_step_does(corpus, tmp_path, capsys):
    loaded = planted_with_words("gemma3")
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    argv = ["quant", str(tmp_path / "model"), "--corpus", corpus, "--samples", "2", "--seq-len", "16"]
    argv += ["--calib-samples", "2", "--schemes", "W8A8", "--strategies", "none,best", "--sensitivity", "W8A8"]
    code, stdout, stderr = run_cli([*argv, "--seeds", "2", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, stderr
    for step in ("calibrating: one pass over 2 held-out windows", "unquantized perplexity on 2 x 16 windows",
                 "best for W8A8: trying outlier-tokens", "[1/2] W8A8 none", "seed 1 (2/2)",
                 "sensitivity: W8A8 in one block at a time, 4 blocks x 2 windows"):  # fmt: skip
        assert step in stderr
    assert "mean ± sd, 2 seeds" in stdout
    assert "mean ± sd, 2 seeds" in (tmp_path / "out" / "report.md").read_text()
    code, _, stderr = run_cli([*argv, "--seeds", "0"], capsys)
    assert code == 2 and "--seeds 0: must be at least 1" in stderr


def test_every_command_draws_windows_with_seed_0_by_default():
    from massact.cli import app

    commands = {c.name or c.callback.__name__: c.callback for c in app.registered_commands}
    seeded = {name: inspect.signature(fn).parameters["seed"].default for name, fn in commands.items()
              if "seed" in inspect.signature(fn).parameters}  # fmt: skip
    assert {"scan", "intervene", "attention", "trace", "quant", "export"} <= set(seeded)
    assert set(seeded.values()) == {0}


def _write_gguf(path, types) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for index, (kind, rows) in enumerate(types):
        data = np.linspace(-1, 1, rows * 64, dtype=np.float32).reshape(rows, 64)
        if kind == "F32":
            writer.add_tensor(f"blk.{index}.weight", data)
        else:
            kind_enum = gguf.GGMLQuantizationType[kind]
            packed = gguf.quants.quantize(data, kind_enum)
            writer.add_tensor(f"blk.{index}.weight", packed, raw_shape=packed.shape, raw_dtype=kind_enum)
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))  # 1-D: not a weight matrix
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_header_names_the_run_dtype_and_mixed_weight_types(tmp_path):
    mixed = tmp_path / "tiny.Q8_0.gguf"
    _write_gguf(mixed, [("Q8_0", 96), ("F16", 32)])
    assert gguf_weight_types(mixed) == [("Q8_0", 0.75), ("F16", 0.25)]
    text = gguf_quantization(mixed, torch.float16)
    assert text == "Q8_0 GGUF, de-quantized to float16; weight types Q8_0 75%, F16 25%"
    single = tmp_path / "one.Q8_0.gguf"
    _write_gguf(single, [("Q8_0", 32)])
    assert gguf_quantization(single, torch.bfloat16) == "Q8_0 GGUF, de-quantized to bfloat16"
    assert gguf_quantization(single) == "Q8_0 GGUF, de-quantized to float32"


def test_weight_types_are_read_once_and_kept_beside_the_converted_copy(tmp_path, monkeypatch):
    from massact.models import gguf as gguf_files

    mixed = tmp_path / "tiny.Q8_0.gguf"
    _write_gguf(mixed, [("Q8_0", 96), ("F16", 32)])
    converted = tmp_path / "converted"
    converted.mkdir()
    assert gguf_files.cached_weight_types(mixed, converted) == [("Q8_0", 0.75), ("F16", 0.25)]
    assert [p.name for p in converted.iterdir()] == [gguf_files.WEIGHT_TYPES_FILE]

    def unread(path):
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(gguf_files, "gguf_weight_types", unread)
    assert gguf_files.cached_weight_types(mixed, converted) == [("Q8_0", 0.75), ("F16", 0.25)]
    text = gguf_quantization(mixed, torch.float16, gguf_files.cached_weight_types(mixed, converted))
    assert text == "Q8_0 GGUF, de-quantized to float16; weight types Q8_0 75%, F16 25%"
    monkeypatch.undo()
    unwritable = tmp_path / "file"
    unwritable.write_text("")  # a folder under a regular file cannot be made, not even by root
    assert gguf_files.cached_weight_types(mixed, unwritable / "sub") == [("Q8_0", 0.75), ("F16", 0.25)]
