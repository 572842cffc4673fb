"""Every feature that needs one of massact's optional extras names that extra, in a command that works pasted."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from cli_runner import run as run_cli
from planting import letter_word, tiny_model, word_tokenizer

from massact.errors import install_hint

EXTRAS = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
COMMANDS = [
    ["atlas"],
    ["attention"],
    ["export"],
    ["intervene"],
    ["merge"],
    ["quant"],
    ["rewrite"],
    ["scan"],
    ["stream"],
    ["trace"],
    ["train", "gpt2"],
    ["vit", "samples"],
    ["vit", "fix-reg-mean"],
]
NEEDS = {"quant": "eval", "intervene": "eval", "rewrite": "quant", "train": "tensorboard", "vit": "vision"}  # in help


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_help_names_the_extra_each_install_needs(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: the hint is not split by the help's box
    code, stdout, _ = run_cli([*command, "--help"], capsys)
    assert code == 0
    installs = [found.rstrip("):.,;") for found in re.findall(r"pip install (\S+)", stdout)]
    assert all(re.fullmatch(r"'massact\[(\w+)\]'", found) for found in installs), installs
    named = {re.fullmatch(r"'massact\[(\w+)\]'", found).group(1) for found in installs}
    assert named <= EXTRAS.keys()
    expected = {NEEDS[command[0]]} if command[0] in NEEDS else set()
    assert named == (expected | {"vision"} if command == ["scan"] else expected)  # scan --images samples


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny GPT-2 with a word tokenizer, saved, and a corpus of its words."""
    root = tmp_path_factory.mktemp("extras")
    tiny_model("gpt2").save_pretrained(root / "model")
    word_tokenizer(letter_word, bos=False).save_pretrained(root / "model")
    (root / "corpus.txt").write_text(" ".join(letter_word(10 + i % 50) for i in range(3000)), encoding="utf-8")
    return root


TEXT_RUN = ["--seq-len", "16", "--out", "{out}"]
CASES = {  # extra: (the module it brings, the command line that needs it)
    "online": ("datasets", ["scan", "{model}", "--corpus", "wikitext", *TEXT_RUN]),
    "eval": ("lm_eval", ["quant", "{model}", "--corpus", "{corpus}", "--tasks", "arc_easy", *TEXT_RUN]),
    "quant": (
        "optimum.quanto",
        ["rewrite", "{model}", "--rescale", "0.5", "--check-quant", "w8a8", "--corpus", "{corpus}", *TEXT_RUN],
    ),
    "vision": ("skimage", ["vit", "samples", "{out}"]),
}


@pytest.mark.parametrize("extra", list(CASES))
def test_a_missing_extra_is_one_line_naming_it(extra, saved, tmp_path, capsys, monkeypatch):
    module, argv = CASES[extra]
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were not installed
    out = tmp_path / "out"
    fill = {"model": str(saved / "model"), "corpus": str(saved / "corpus.txt"), "out": str(out)}
    code, stdout, stderr = run_cli([a.format(**fill) for a in argv], capsys)
    message = stderr.strip().splitlines()[-1]
    assert code == 2 and not out.exists() and "Traceback" not in stderr
    assert message.startswith("massact: error: ") and f"`{install_hint(extra)}`" in message
    assert extra in EXTRAS
