"""A 2-process gloo run on CPU (torchrun, as `accelerate launch` does) equals the 1-process run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from planting import assert_same_summary as _assert_same

from massact.cli import main
from massact.corpus import CorpusSummary
from massact.errors import MassactError
from massact.outputs import check_output_dir

LAUNCH_TIMEOUT = 900  # seconds: two processes importing torch on a loaded 2-core machine
# set by a launcher around pytest, they would make the child processes join the wrong run
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def _launch(argv: list[str], logs: Path) -> tuple[int, str]:
    """Run `torchrun ... -m massact ARGV`: its exit status and, for failures, its stderr and every process's."""
    # --standalone: the launcher binds a free port itself (port 0), so no port is picked here and lost to a race
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    launcher += ["--rdzv-conf", f"join_timeout={LAUNCH_TIMEOUT}", "--log-dir", str(logs), "--redirects", "3"]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env |= {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(
        [*launcher, "-m", "massact", *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        start_new_session=True,  # a timeout ends the launcher and its workers together
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        stderr = f"timed out after {LAUNCH_TIMEOUT} s\n{stderr}"
    workers = [f"--- {p.relative_to(logs)}:\n{p.read_text()[-3000:]}" for p in sorted(logs.rglob("stderr.log"))]
    return process.returncode, "\n".join([f"--- launcher:\n{stderr[-3000:]}", *workers])


@pytest.mark.slow  # launches a two-process distributed run
def test_two_gloo_processes_equal_one(tiny_dir, tmp_path):
    args = ["scan", str(tiny_dir), "--corpus", str(tiny_dir / "corpus.txt"), "--samples", "7", "--seq-len", "16"]
    args += ["--batch-size", "2", "--device", "cpu", "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "one")])
    assert exit_info.value.code == 0
    code, messages = _launch([*args, "--out", str(tmp_path / "two")], tmp_path / "logs")
    assert code == 0, messages
    one, two = CorpusSummary.load(tmp_path / "one"), CorpusSummary.load(tmp_path / "two")
    assert two.num_sequences == 7
    _assert_same(two, one)


def _check_at_once(rank: int, out: Path, barrier, failures) -> None:
    os.environ |= {"RANK": str(rank), "WORLD_SIZE": "2"}
    barrier.wait()
    try:
        check_output_dir(out)
    except MassactError as exc:
        failures.put(str(exc))


def test_processes_of_one_launch_check_the_output_folder_at_once(tmp_path):
    """Every process of a launch starts by checking --out; only the main one may make and remove its probe."""
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for attempt in range(10):
        barrier = context.Barrier(2)
        out = tmp_path / f"out{attempt}"
        workers = [context.Process(target=_check_at_once, args=(r, out, barrier, failures)) for r in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0, 0]
        assert not out.exists()  # the main process's check leaves nothing behind
    assert failures.empty(), failures.get()


def test_the_main_process_still_refuses_an_output_it_cannot_write(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(MassactError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "file" / "out")
    monkeypatch.setenv("RANK", "1")  # the others leave the check, and the writing, to it
    assert check_output_dir(tmp_path / "file" / "out") == tmp_path / "file" / "out"
