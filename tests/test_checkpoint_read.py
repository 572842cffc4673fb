"""`Checkpoint.read`: every safetensors dtype and shape read exactly as safetensors reads it, converted to the
run's dtype, and a file cut short named with its tensor."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from massact.errors import MassactError
from massact.models import checkpoint as checkpoint_module
from massact.models.checkpoint import SAFETENSORS_DTYPES, Checkpoint


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {f"w.{name}": (torch.randn(3, 5, generator=g) * 50).to(dtype) for name, dtype in SAFETENSORS_DTYPES.items()}
    out["scalar"] = torch.tensor(2.5, dtype=torch.bfloat16)
    out["empty"] = torch.zeros(0, 7)
    out["big"] = torch.randn(64, 33, 3, generator=g)
    return out


@pytest.fixture
def saved(tmp_path):
    tensors = _tensors()
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    index = {name: {"safetensors_file": str(path), "weight_name": name} for name in tensors}
    return tensors, path, Checkpoint(index, tmp_path / "offload")


def test_every_dtype_reads_as_safetensors_reads_it(saved):
    tensors, path, checkpoint = saved
    read = checkpoint.read(list(tensors), {name: tensors[name].dtype for name in tensors})
    with safe_open(path, framework="pt") as handle:
        for name in tensors:
            expected = handle.get_tensor(name)
            assert read[name].dtype == expected.dtype and read[name].shape == expected.shape, name
            assert torch.equal(read[name].reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), name


@pytest.mark.parametrize("chunk", [64 * 2**20, 100])  # one read; and many reads, one not a whole element
def test_tensors_convert_to_the_run_dtype(saved, chunk, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "READ_CHUNK", chunk)
    tensors, _, checkpoint = saved
    names = ["w.BF16", "w.F16", "scalar", "big"]
    read = checkpoint.read(names, dict.fromkeys(names, torch.float32))
    for name in names:
        assert read[name].dtype == torch.float32 and torch.equal(read[name], tensors[name].float())


def test_a_file_cut_short_names_the_file_and_the_tensor(saved):
    tensors, path, checkpoint = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3])  # the last tensor in the file loses its end
    with pytest.raises(MassactError) as caught:  # the whole file is refused, as safetensors refuses it
        checkpoint.read(["big", "scalar"], {"big": torch.float32, "scalar": torch.float32})
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read tensor big (the file is 3 bytes shorter than its header says)")
    assert message.endswith("the checkpoint is damaged: download or convert it again")
    path.write_bytes(data[:6])  # not even a header
    with pytest.raises(MassactError, match=f"{path}: cannot read tensor big .*damaged"):
        checkpoint.read(["big"], {"big": torch.float32})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_folder_cut_short_before_the_run_is_refused_at_open(family, tmp_path):
    from offload_models import saved_family

    from massact.models.loading import load_model

    folder = saved_family(family, tmp_path)
    shard = folder / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 5])
    with pytest.raises(MassactError) as caught:
        load_model(str(folder), device="cpu", offload="blocks")
    expected = f"{shard}: cannot read tensor (header) (the file is 5 bytes shorter than its header says)"
    assert str(caught.value).startswith(expected)
