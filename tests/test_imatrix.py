"""The llama.cpp importance matrix: read back with gguf's own reader, its sums against plain torch hooks."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from cli_runner import run
from planting import MARK, VOCAB, letter_word, planted_with_words, tiny_model, word_tokenizer

from massact.errors import MassactError
from massact.export import ExportFiles, measure_exports, parse_formats

FAMILIES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
# two windows of 8 token ids; MARK (the planted token) at position 0 of the first and 3 of the second
WINDOWS = torch.tensor([[MARK, 11, 12, 13, 14, 15, 16, 17], [20, 21, 22, MARK, 24, 25, 26, 27]])


def plain_squares(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Sum of x^2 per input column and the rows seen, for every nn.Linear, by hooks written here."""
    sums, rows, handles = {}, {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):

            def hook(m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x * x).sum(0)
                rows[name] = rows.get(name, 0) + x.shape[0]

            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=WINDOWS)
    for handle in handles:
        handle.remove()
    return sums, rows


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def written(request, tmp_path_factory):
    family = request.param
    loaded = planted_with_words(family)
    result = measure_exports(loaded, WINDOWS, corpus="planted", batch_size=1, progress=False, imatrix=True)
    out = tmp_path_factory.mktemp(f"imatrix-{family}")
    ExportFiles(result, ["imatrix"]).write(out)
    return family, loaded, gguf.GGUFReader(out / "imatrix.gguf"), out


def _value(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_keys_are_those_llama_imatrix_writes(written):
    _, _, reader, _ = written
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert keys == ["general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"]
    assert _value(reader, "general.type") == "imatrix"
    assert _value(reader, "imatrix.datasets") == ["planted"]
    for key in ("imatrix.chunk_count", "imatrix.chunk_size"):
        assert reader.fields[key].types == [gguf.GGUFValueType.UINT32]  # llama-quantize reads them as u32
    assert (_value(reader, "imatrix.chunk_count"), _value(reader, "imatrix.chunk_size")) == (2, 8)


def test_names_are_llama_cpp_names_of_every_block_linear(written):
    family, loaded, reader, _ = written
    names = gguf.get_tensor_name_map(FAMILIES[family], 4)  # gguf's own map, asked module by module
    expected = {}
    for module_name, module in loaded.model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_name != "lm_head":
            expected[f"{names.get_name(module_name)}.weight"] = module.in_features
    assert "blk.0.attn_q.weight" in expected and "blk.3.ffn_down.weight" in expected and len(expected) == 28
    tensors = {t.name: t for t in reader.tensors}
    assert [t.name for t in reader.tensors] == [f"{n}.{s}" for n in sorted(expected) for s in ("in_sum2", "counts")]
    for name, columns in expected.items():
        for suffix, shape in (("in_sum2", [columns]), ("counts", [1])):
            tensor = tensors[f"{name}.{suffix}"]
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
            assert tensor.shape.tolist() == shape  # ggml's ne [in_features, 1] stored 1-D, as llama-imatrix does
    assert not any(t.name.startswith("output.") for t in reader.tensors)  # llama-imatrix leaves the head out


def test_sums_equal_plain_torch(written):
    family, loaded, reader, _ = written
    names = gguf.get_tensor_name_map(FAMILIES[family], 4)
    sums, rows = plain_squares(loaded.model)
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    for module_name, expected in sums.items():
        if module_name == "lm_head":
            continue
        name = f"{names.get_name(module_name)}.weight"
        assert tensors[f"{name}.counts"].tolist() == [float(rows[module_name])] == [16.0]
        got = tensors[f"{name}.in_sum2"].reshape(-1)
        np.testing.assert_allclose(got, expected.float().numpy(), rtol=1e-5, atol=1e-6)


def test_the_planted_unit_leads_its_down_projection(written):
    """The plant drives MLP unit 5 of block 1 on MARK only: the largest E[x^2] into blk.1.ffn_down."""
    _, _, reader, _ = written
    tensor = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight.in_sum2")
    values = np.asarray(tensor.data).reshape(-1)
    assert int(values.argmax()) == 5
    assert values[5] > 10 * np.delete(values, 5).max()


def test_report_says_how_to_quantize_with_it(written):
    _, _, _, out = written
    report = (out / "report.md").read_text()
    assert "llama-quantize --imatrix imatrix.gguf model-f16.gguf model-Q4_K_M.gguf Q4_K_M" in report
    assert "| `blk.1.ffn_down.weight` | `model.layers.1.mlp.down_proj` | 5 |" in report


def test_imatrix_is_asked_for_by_name():
    assert "imatrix" not in parse_formats(["all"])
    assert parse_formats(["sites,imatrix"]) == ["sites", "imatrix"]


def test_unknown_architecture_is_refused_before_the_pass():
    model = tiny_model("opt")
    loaded = planted_with_words("llama")
    loaded.model = model
    with pytest.raises(MassactError, match="model type 'opt'"):
        measure_exports(loaded, WINDOWS, progress=False, imatrix=True)


def test_non_finite_sums_are_refused_and_nothing_written(tmp_path):
    loaded = planted_with_words("qwen2")
    with torch.no_grad():
        loaded.model.model.layers[2].self_attn.o_proj.weight[0, 0] = float("inf")  # overflows from block 2 on
    result = measure_exports(loaded, WINDOWS, progress=False, imatrix=True)
    with pytest.raises(MassactError, match=r"inputs of \d+ weights are not finite \(first blk\.2\.ffn_down"):
        result.imatrix.write(tmp_path / "imatrix.gguf")
    assert not (tmp_path / "imatrix.gguf").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("imatrix-cli")
    for family in ("llama", "opt"):
        tiny_model(family).save_pretrained(root / family)
        word_tokenizer(letter_word, bos=family == "llama").save_pretrained(root / family)
    (root / "corpus.txt").write_text(" ".join(letter_word(10 + i % (VOCAB - 10)) for i in range(400)))
    return root


def test_cli_writes_imatrix_and_refuses_opt(saved, tmp_path, capsys):
    common = ["--corpus", str(saved / "corpus.txt"), "--samples", "2", "--seq-len", "16", "--format", "imatrix"]
    code, out, err = run(["export", str(saved / "llama"), *common, "--out", str(tmp_path / "ok")], capsys)
    assert code in (0, None), err
    assert "imatrix.gguf: llama.cpp llama-quantize --imatrix" in out
    reader = gguf.GGUFReader(tmp_path / "ok" / "imatrix.gguf")
    counts = [float(np.asarray(t.data).reshape(-1)[0]) for t in reader.tensors if t.name.endswith(".counts")]
    assert len(counts) == 28 and set(counts) == {32.0}  # 2 windows x 16 tokens
    code, out, err = run(["export", str(saved / "opt"), *common, "--out", str(tmp_path / "no")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "model type 'opt'" in err and "Traceback" not in err
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_smollm2_names_and_sizes_are_those_of_its_gguf(smollm2, tmp_path):
    """Every 2-D block weight of the bundled GGUF, and nothing else, with its input size: what llama-quantize
    matches an imatrix entry against (`ne[0]` of the weight)."""
    from massact.data.corpus import load_texts, token_windows
    from massact.models.loading import default_gguf_path

    weights = {t.name: t for t in gguf.GGUFReader(default_gguf_path()).tensors}
    windows = token_windows(smollm2.tokenizer, load_texts("shakespeare"), 2, 32, 0)
    result = measure_exports(smollm2, windows, corpus="shakespeare", progress=False, imatrix=True, act_scales=False)
    ExportFiles(result, ["imatrix"]).write(tmp_path)
    reader = gguf.GGUFReader(tmp_path / "imatrix.gguf")
    sums = {t.name.removesuffix(".in_sum2"): t for t in reader.tensors if t.name.endswith(".in_sum2")}
    blocks = {name for name, t in weights.items() if name.startswith("blk.") and len(t.shape) == 2}
    assert set(sums) == blocks and len(blocks) == 30 * 7
    assert all(int(t.shape[0]) == int(weights[name].shape[0]) for name, t in sums.items())
    # channel 1229 of block 11's down-projection input writes the massive activation (docs/trace.md)
    down = np.asarray(next(t for t in reader.tensors if t.name == "blk.11.ffn_down.weight.in_sum2").data).reshape(-1)
    assert int(down.argmax()) == 1229
