"""Output folders: checked truthfully before work, written whole or not at all, one run per folder;
and the shared formatting of numbers, tokens and Markdown text."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from massact import outputs
from massact.errors import MassactError
from massact.format import fmt_number, fmt_ppl, md_code, md_escape, show_token
from massact.outputs import MARKER, check_output_dir, read_marker, staged_output


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_run(out: Path, files: dict[str, str], command: str) -> None:
    with staged_output(out, command=command) as staging:
        for name, text in files.items():
            (staging / name).write_text(text)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "where",
    ["under a file", "file itself", "proc", "read-only folder"],
)
def test_unwritable_out_fails_fast_and_makes_nothing(where, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    if where == "under a file":
        out = a_file / "sub" / "deeper"
    elif where == "file itself":
        out = a_file
    elif where == "proc":  # fails for root as well: /proc takes no new folders
        out = Path("/proc/massact-out/sub")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "run"
        if os.access(locked, os.W_OK) and os.geteuid() == 0:
            out = Path("/sys/massact-out")  # root ignores the mode bits; /sys is read-only for everyone
    start = time.monotonic()
    with pytest.raises(MassactError) as info:
        check_output_dir(out)
    assert str(info.value).startswith(f"`out={str(out)!r}`: ")  # the parameter, as a Python caller wrote it
    assert time.monotonic() - start < 1.0
    assert "\n" not in str(info.value)
    assert not Path("/proc/massact-out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a_file"] + (["locked"] if where == "read-only folder" else [])
    )


def test_check_leaves_no_trace_of_the_folders_it_made(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    assert check_output_dir(out) == out
    assert list(tmp_path.iterdir()) == []


def test_files_get_plain_modes_and_the_run_a_marker(tmp_path):
    out = tmp_path / "run"
    with staged_output(out, command="massact export") as staging:
        fd = os.open(staging / "weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        (staging / "figures").mkdir(mode=0o700)
        (staging / "figures" / "a.png").write_bytes(b"png")
        os.chmod(staging / "figures" / "a.png", 0o600)
    mask = _umask()
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "figures").stat().st_mode) == 0o777 & ~mask
    for path in (out / "weights.safetensors", out / "figures" / "a.png", out / MARKER):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert read_marker(out) == {"command": "massact export", "files": ["figures", "weights.safetensors"]}
    assert _leftovers(tmp_path) == []


def test_a_new_run_replaces_the_previous_run_whole_and_keeps_other_files(tmp_path):
    out = tmp_path / "run"
    _write_run(out, {"corpus.json": "{}", "means.json": "{}", "report.md": "corpus"}, "massact scan")
    (out / "notes.txt").write_text("mine")  # not written by massact: kept
    _write_run(out, {"scan.json": "{}", "report.md": "scan"}, "massact scan")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "notes.txt", "report.md", "scan.json"])
    assert (out / "report.md").read_text() == "scan"
    assert read_marker(out)["files"] == ["report.md", "scan.json"]
    assert _leftovers(tmp_path) == []


def test_adding_to_a_run_keeps_its_files(tmp_path):
    out = tmp_path / "run"
    _write_run(out, {"checkpoint.json": "{}"}, "massact train gpt2")
    with staged_output(out, command="massact train gpt2", replace=False) as staging:
        (staging / "monitor.csv").write_text("step\n")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "checkpoint.json", "monitor.csv"])
    assert read_marker(out)["files"] == ["checkpoint.json", "monitor.csv"]


def test_a_write_that_fails_midway_restores_the_previous_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _write_run(out, {"a.json": "old a", "b.json": "old b"}, "massact scan")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(src)
        if len(calls) == 5:  # after the old run was set aside and one new file moved in
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", flaky_replace)
    with pytest.raises(MassactError, match="No space left on device") as info:
        _write_run(out, {"a.json": "new a", "c.json": "new c"}, "massact trace")
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    assert len(calls) == 5 + 4  # the failure and the rollback of everything moved
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_an_error_inside_the_run_writes_nothing(tmp_path):
    out = tmp_path / "run"
    _write_run(out, {"scan.json": "old"}, "massact scan")
    with pytest.raises(RuntimeError), staged_output(out) as staging:
        (staging / "scan.json").write_text("new")
        raise RuntimeError("figure failed")
    assert (out / "scan.json").read_text() == "old"
    assert json.loads((out / MARKER).read_text())["command"] == "massact scan"
    assert _leftovers(tmp_path) == []


def test_numbers_are_formatted_one_way():
    assert fmt_number(23040) == "23,040"
    assert fmt_number(2173910.44) == "2,173,910.4"
    assert fmt_number(6.338e6) == "6,338,000.0"  # never 6.338e+06
    assert fmt_ppl(41.0) != fmt_ppl(41.04)
    assert fmt_ppl(41.04) == "41.04"
    assert fmt_number(float("nan")) == "nan" and fmt_number(float("inf")) == "inf" and fmt_number(None) == "-"
    assert fmt_number(0.000123) == "0.000123"
    assert "e" not in fmt_number(123456789012.0)


def test_tokens_and_markdown_are_escaped():
    assert show_token("\n") == "\\n" and show_token(" ") == "␣" and show_token("\t ") == "\\t␣"
    assert show_token("") != "" and show_token(" the") == " the"
    cell = md_escape("a|b `c`\nd")
    assert "|" not in cell.replace("\\|", "") and "\n" not in cell and "\\`" in cell
    assert md_code("x`y") == "``x`y``" and md_code("`") == "`` ` ``"
    assert "\n" not in md_code("a\nb") and md_code("a|b") == "`a\\|b`"
