"""A 2-process gloo run on CPU (torchrun, as `accelerate launch` does) equals the 1-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_corpus import _assert_same, tiny_dir  # noqa: F401  (fixture)

from massact.cli import main
from massact.corpus import CorpusSummary


@pytest.mark.slow  # launches a two-process distributed run
def test_two_gloo_processes_equal_one(tiny_dir, tmp_path):  # noqa: F811
    args = ["scan", str(tiny_dir), "--corpus", str(tiny_dir / "corpus.txt"), "--samples", "7", "--seq-len", "16"]
    args += ["--batch-size", "2", "--device", "cpu", "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "one")])
    assert exit_info.value.code == 0
    # --standalone: the launcher binds a free port itself (a port picked here could be taken before it binds)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "massact"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [*launcher, *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = CorpusSummary.load(tmp_path / "one"), CorpusSummary.load(tmp_path / "two")
    assert two.num_sequences == 7
    _assert_same(two, one)
