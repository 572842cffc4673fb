"""`massact --help`, usage errors and output-path checks answer without importing torch, transformers or matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "matplotlib")

_PROBE = """
import json, sys
from massact.cli import build_command, main
build_command()
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        codes.append(exc.code)
heavy = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _probe(argvs: list[list[str]]) -> dict:
    """Run `massact ARGV` for each ARGV in one fresh interpreter; exit codes and heavy modules loaded."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argvs), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_of_every_command_imports_no_heavy_package():
    commands = [["--help"], ["scan", "--help"], ["quant", "--help"], ["export", "--help"], ["atlas", "--help"]]
    commands += [[name, "--help"] for name in ("trace", "intervene", "stream", "attention", "merge")]
    commands += [["train", "gpt2", "--help"], ["experiment", "attention-bias", "--help"], ["vit", "samples", "--help"]]
    commands += [["experiment", "attention-variants", "--help"], ["rewrite", "--help"]]
    probe = _probe(commands)
    assert probe["codes"] == [0] * len(commands)
    assert probe["heavy"] == []


def test_usage_errors_and_bad_out_import_no_heavy_package(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    argvs = [
        ["scan", "--top-k", "zero"],  # click's usage error
        ["quant", "--no-such-option"],
        ["scan", "--out", str(blocked / "sub")],  # an --out that cannot be made
        ["export", "--out", str(blocked)],
        ["atlas", "default", "--out", str(blocked)],
        ["train", "gpt2", str(blocked)],
        ["rewrite", "--rescale", "auto", "--out", str(blocked / "sub")],
    ]
    probe = _probe(argvs)
    assert probe["codes"] == [2] * len(argvs)
    assert probe["heavy"] == []


def test_the_python_api_still_imports_on_use():
    import massact

    assert massact.load_model.__module__ == "massact.models.loading"
    assert massact.Thresholds().abs == 100.0
    assert "scan" in dir(massact)
