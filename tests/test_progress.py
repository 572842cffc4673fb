"""Progress bars: drawn with rich on a terminal (counts, time left, the note), nothing under a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

_CHILD = """
import time
from massact.progress import bar
with bar(3, "demo (block 1/3)", unit="batch") as shown:
    shown.update(1)
    shown.set_description("demo (block 2/3)")
    shown.set_postfix_str("ppl 12.5")
    time.sleep(0.3)
    shown.update(2)
    time.sleep(0.3)
    assert shown.n == 3
print("done")
"""


def _run(on_terminal: bool) -> tuple[str, str]:
    """The child's stdout and what it drew on stderr (a pseudo-terminal, or a pipe)."""
    if not on_terminal:
        done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, check=True)
        return done.stdout, done.stderr
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, stderr=follower, env=env, text=True
    )
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    stdout = child.stdout.read()
    assert child.wait(timeout=120) == 0
    os.close(leader)
    return stdout, drawn.decode("utf-8", "replace")


def test_a_bar_on_a_terminal_shows_counts_the_note_and_time_left():
    stdout, drawn = _run(on_terminal=True)
    assert stdout == "done\n"
    assert "demo (block 2/3)" in drawn and "ppl 12.5" in drawn and "batch" in drawn
    assert "3/3" in drawn and "left" in drawn


def test_no_bar_under_a_pipe():
    stdout, stderr = _run(on_terminal=False)
    assert stdout == "done\n" and stderr == ""


def test_a_run_block_by_block_says_which_block_it_is_on_under_a_pipe(tmp_path, capsys, monkeypatch):
    import re

    from offload_models import saved_family

    from massact import progress
    from massact.corpus import CorpusConfig
    from massact.corpus import run as corpus_run
    from massact.models.loading import load_model

    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)  # every step a line (the default thins them to one per 10 s)
    for family in ("llama", "gpt2", "mixtral"):  # a BOS, none, fused experts read with their block
        folder = saved_family(family, tmp_path / family)
        loaded = load_model(str(folder), device="cpu", offload="blocks")
        blocks = len(loaded.offload.structure.blocks)
        capsys.readouterr()
        corpus_run(loaded, str(folder / "corpus.txt"), CorpusConfig(samples=4, seq_len=16, batch_size=2))
        lines = re.findall(r"^corpus scan \(block (\d+)/(\d+)\): (\d+)/(\d+) batches$", capsys.readouterr().err, re.M)
        assert lines, family
        assert [(int(b), int(n)) for b, n, _, _ in lines] == [(b, blocks) for b in range(1, blocks + 1) for _ in (0, 1)]
        assert [int(done) for _, _, done, _ in lines] == list(range(1, 2 * blocks + 1))
        assert {int(total) for *_, total in lines} == {2 * blocks}
