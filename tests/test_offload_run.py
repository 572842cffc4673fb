"""How a block-by-block run starts and stops: `auto` chooses it exactly when the model does not fit and says so; a
checkpoint damaged mid-run stops with one line and writes nothing; Ctrl-C removes the temporary files; `stream`
refuses it before any work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_runner import run
from offload_models import saved_family
from safetensors import safe_open
from safetensors.torch import save_file

from massact.models import checkpoint as checkpoint_module
from massact.models.loading import load_model
from massact.models.memory import Workload, module_bytes

FAMILIES = ["llama", "gpt2"]
AUTO_LINE = re.compile(
    r"weights \d+\.\d\d GB \(float32\), budget \d+\.\d\d GB, block \d+\.\d\d GB: running block by block "
    r"\(the model does not fit; --offload none to load it whole\)"
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: saved_family(family, root) for family in FAMILIES}


def corpus(folder: Path) -> list[str]:
    return ["--corpus", str(folder / "corpus.txt"), "--samples", "4", "--seq-len", "16", "--batch-size", "2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_runs_blocks_exactly_when_the_weights_and_the_run_exceed_the_budget(folders, family, capsys):
    workload = Workload(batch=2, tokens=16)
    whole = load_model(str(folders[family]), device="cpu", offload="none")
    needed = module_bytes(whole.model) + workload.working_bytes(whole.model, whole.dtype)
    fits = load_model(str(folders[family]), device="cpu", max_memory=needed, workload=workload)
    assert fits.offload is None and "block by block" not in capsys.readouterr().err
    short = load_model(str(folders[family]), device="cpu", max_memory=needed - 1, workload=workload)
    assert short.offload is not None
    assert AUTO_LINE.search(capsys.readouterr().err)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_on_the_command_line_says_why_and_records_it(folders, family, capsys):
    argv = ["scan", str(folders[family]), *corpus(folders[family]), "--device", "cpu", "--json"]
    code, out, err = run([*argv, "--max-memory", "4KB"], capsys)
    assert code == 0, err
    assert AUTO_LINE.search(err) and json.loads(out)["execution"]["offload"] == "blocks"
    code, out, err = run([*argv, "--max-memory", "4GB"], capsys)
    assert code == 0, err
    assert "block by block" not in err and json.loads(out)["execution"]["offload"] == "none"


def _damage_before_block(monkeypatch, damage, at_call: int = 2) -> list[int]:
    """Let the first reads of the checkpoint through, then `damage()` its file just before read `at_call`."""
    read, calls = checkpoint_module.Checkpoint.read, []

    def damaged_mid_run(self, names, dtypes):
        calls.append(1)
        if len(calls) == at_call:
            damage()
        return read(self, names, dtypes)

    monkeypatch.setattr(checkpoint_module.Checkpoint, "read", damaged_mid_run)
    return calls


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("massact: error")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_truncated_shard_mid_run_stops_with_one_line(family, tmp_path, capsys, monkeypatch):
    folder = saved_family(family, tmp_path / "model")
    shard = folder / "model.safetensors"

    def truncate() -> None:
        with open(shard, "r+b") as handle:
            handle.truncate(shard.stat().st_size // 2)

    calls = _damage_before_block(monkeypatch, truncate)
    out = tmp_path / "out"
    argv = ["scan", str(folder), *corpus(folder), "--device", "cpu", "--offload", "blocks", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 2 and len(calls) == 2
    line = _one_error_line(err)
    assert str(shard) in line and "cannot read tensor" in line and "damaged" in line
    assert not out.exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_tensor_mid_run_names_it_and_its_file(family, tmp_path, capsys, monkeypatch):
    folder = saved_family(family, tmp_path / "model")
    shard = folder / "model.safetensors"
    with safe_open(shard, framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    lost = next(key for key in keys if re.search(r"\.2\..*weight$", key))  # a weight of block 2

    def drop() -> None:
        with safe_open(shard, framework="pt") as handle:
            kept = {key: handle.get_tensor(key) for key in keys if key != lost}
        save_file(kept, shard, metadata=metadata)

    _damage_before_block(monkeypatch, drop)
    out = tmp_path / "out"
    argv = ["quant", str(folder), *corpus(folder), "--device", "cpu", "--offload", "blocks", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert str(shard) in line and lost in line
    assert not out.exists()


INTERRUPTING = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from massact.models import checkpoint
    read = checkpoint.Checkpoint.read

    def interrupted(self, names, dtypes):
        files = [str(p.relative_to(self.folder.parent)) for p in self.folder.parent.rglob("*") if p.is_file()]
        if any(f.endswith(".bin") for f in files):  # block outputs on disk: the next block is read, and Ctrl-C
            Path(os.environ["SEEN"]).write_text("\\n".join(files))
            raise KeyboardInterrupt
        return read(self, names, dtypes)

    checkpoint.Checkpoint.read = interrupted
    from massact.cli import main
    main(sys.argv[1:])
    """
)


@pytest.mark.parametrize("family", FAMILIES)
def test_ctrl_c_mid_block_removes_the_temporary_files(folders, family, tmp_path):
    temp, seen, out = tmp_path / "tmp", tmp_path / "seen.txt", tmp_path / "out"
    temp.mkdir()
    argv = [*corpus(folders[family]), "--device", "cpu", "--offload", "blocks", "--max-memory", "1KB"]
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTING, "scan", str(folders[family]), *argv, "--out", str(out)],
        env={**os.environ, "TMPDIR": str(temp), "SEEN": str(seen)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 130, done.stderr
    assert "interrupted; nothing was written" in done.stderr and "Traceback" not in done.stderr
    files = seen.read_text().splitlines()
    assert any(re.match(r"massact-offload-\w+/activations-\w+/g\d+-b\d+\.bin$", f) for f in files), files  # spilled
    assert list(temp.iterdir()) == [] and not out.exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_stream_refuses_blocks_before_any_work(folders, family, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["stream", str(folders[family]), "--text-file", str(folders[family] / "corpus.txt"), "--device", "cpu"]
    code, _, err = run([*argv, "--offload", "blocks", "--out", str(out)], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "does not run block by block" in line and "--device-map auto" in line
    assert not out.exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_accelerate_offloaded_to_disk_takes_its_inputs_on_the_cpu(folders, family, tmp_path):
    """A device map that puts every weight on disk leaves them on the meta device; inputs still go to the CPU."""
    import transformers

    from massact.corpus import CorpusConfig
    from massact.corpus import run as corpus_run
    from massact.models.loaded import LoadedModel

    folder = folders[family]
    disk = transformers.AutoModelForCausalLM.from_pretrained(
        folder, device_map={"": "disk"}, offload_folder=str(tmp_path / "offload")
    )
    assert next(disk.parameters()).is_meta
    loaded = LoadedModel(model=disk.eval(), tokenizer=load_model(str(folder), offload="none").tokenizer)
    assert loaded.device.type == "cpu"
    config = CorpusConfig(samples=4, seq_len=16, batch_size=2, progress=False)
    on_disk = corpus_run(loaded, str(folder / "corpus.txt"), config).to_json()
    in_memory = corpus_run(load_model(str(folder), offload="none"), str(folder / "corpus.txt"), config).to_json()
    assert on_disk["sites"] == in_memory["sites"] and on_disk["sites"]


@pytest.mark.parametrize(("family", "by_names"), [("llama", True), ("gpt2", True), ("mixtral", False)])
def test_opening_reads_headers_only_when_keys_are_the_names(family, by_names, tmp_path, monkeypatch):
    """A checkpoint whose keys are the model's names is opened from its headers (no tensor read); Mixtral's
    per-expert keys go through transformers, which fuses them; both read the same weights."""
    import safetensors
    import transformers

    folder = saved_family(family, tmp_path)
    reads: list[str] = []
    opened = safetensors.safe_open

    class Counted:
        def __init__(self, *args, **kwargs):
            self.handle = opened(*args, **kwargs)

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, key):
            reads.append(key)
            return self.handle.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Counted)
    through, fallback = [], checkpoint_module._open_through_transformers
    monkeypatch.setattr(
        checkpoint_module, "_open_through_transformers", lambda *a, **k: through.append(1) or fallback(*a, **k)
    )
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    model, checkpoint = checkpoint_module.open_checkpoint(cls, str(folder), config, dtype=None)
    assert reads == [] and (through == []) == by_names  # no tensor read by massact; transformers' path or not
    try:
        whole = load_model(str(folder), offload="none").model.state_dict()
        names = list(checkpoint.index)
        values = checkpoint.read(names, {name: whole[name].dtype for name in names})
        assert all(torch.equal(values[name], whole[name]) for name in names)
        assert {n for n, t in model.named_parameters() if t.is_meta} <= set(names)
    finally:
        checkpoint.close()
