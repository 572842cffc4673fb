"""Importing massact changes nothing in the caller's process: the matplotlib backend, transformers' registries."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import massact

_PROBE = """
import importlib, json, sys
import matplotlib
matplotlib.use("svg")  # a notebook's or a script's own choice
import massact
torch_after_massact = "torch" in sys.modules
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
from transformers import AttentionInterface
from massact.attention.capture import CAPTURE_NAME
print(json.dumps({
    "backend": matplotlib.get_backend(),
    "torch_after_massact": torch_after_massact,
    "attention_registered": CAPTURE_NAME in AttentionInterface._global_mapping,
    "pyplot": "matplotlib.pyplot" in sys.modules,
}))
"""


def _packages() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(massact.__path__, "massact.")]
    return [name for name in names if not name.endswith("__main__")]


def test_importing_every_module_keeps_the_callers_backend_and_registers_nothing():
    modules = _packages()
    assert "massact.quant.result" in modules and "massact.report.figures" in modules  # the ones that drew figures
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(modules)], capture_output=True, text=True, timeout=300, check=True
    )
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["backend"] == "svg"
    assert probe["torch_after_massact"] is False
    assert probe["attention_registered"] is False
    assert probe["pyplot"] is False  # figures are drawn on Figure objects: no pyplot state, no GUI window


_NAMES = """
import json, sys
{first}
import massact
from massact import scan
print(json.dumps({{
    "same": scan is massact.scan is sys.modules["massact.scan"],
    "callable": callable(massact.scan),
    "run": massact.scan.run.__module__,
    "config": massact.scan.ScanConfig.__name__,
}}))
"""


def test_massact_scan_is_one_name_whatever_was_imported_first():
    seen = []
    for first in (
        "",
        "from massact.scan import ScanConfig",
        "import massact.scan.run",
        "from massact import load_model",
    ):
        done = subprocess.run(
            [sys.executable, "-c", _NAMES.format(first=first)], capture_output=True, text=True, timeout=120, check=True
        )
        seen.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert seen == [{"same": True, "callable": True, "run": "massact.scan.run", "config": "ScanConfig"}] * 4


def test_calling_the_package_is_the_short_form():
    from planting import planted_with_words

    import massact

    for family in ("llama", "gpt2"):
        loaded = planted_with_words(family)
        prompt = " ".join(f"wa{chr(97 + i)}" for i in range(12))
        called = massact.scan(loaded, prompt).to_json()
        direct = massact.scan.run(loaded, prompt).to_json()
        assert called.pop("execution")["offload"] == direct.pop("execution")["offload"] == "none"  # peak memory varies
        assert called == direct
        assert 4 in called["summary"]["dims"]  # the planted dim
