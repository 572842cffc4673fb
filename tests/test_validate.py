"""The shared input checks: one wording each, the option and the value always named, and no copies elsewhere."""

from pathlib import Path

import pytest

from massact.errors import MassactError
from massact.validate import at_least, check_context, check_prompt, given

SRC = Path(__file__).resolve().parents[1] / "src" / "massact"


def test_at_least_names_the_parameter_the_value_and_the_bound():
    at_least("samples", 1)
    at_least("seq_len", 2, 2)
    with pytest.raises(MassactError) as error:
        at_least("seq_len", 1, 2)
    assert str(error.value) == "`seq_len=1`: must be at least 2"
    with pytest.raises(MassactError) as error:
        at_least("score_from", 0, 1, "token 0 has no prediction")
    assert str(error.value) == "`score_from=0`: must be at least 1 (token 0 has no prediction)"


def test_given_writes_values_as_python_does():
    assert given("offload", "blocks") == "`offload='blocks'`"
    assert given("share", 0.5) == "`share=0.5`"
    assert given("corpus", "a b.txt") == "`corpus='a b.txt'`"


def test_check_context_refuses_only_past_the_limit():
    check_context("seq_len", 64, 64)
    check_context("seq_len", 10_000, None)  # no known context: nothing to refuse
    with pytest.raises(MassactError) as error:
        check_context("seq_len", 65, 64)
    assert str(error.value) == "`seq_len=65` is longer than the model's context (64 tokens); lower `seq_len`"
    with pytest.raises(MassactError) as error:
        check_context("the prompt", 200, 64, "shorten the prompt")
    expected = "the prompt (200 tokens) is longer than the model's context (64 tokens); shorten the prompt"
    assert str(error.value) == expected


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", None])
def test_check_prompt_refuses_blank(prompt):
    with pytest.raises(MassactError, match="the prompt is empty"):
        check_prompt(prompt)


def test_check_prompt_takes_text():
    check_prompt(" a ")


@pytest.mark.parametrize("words", ["must be at least", "the prompt is empty", "model's context ("])
def test_each_wording_is_written_once(words):
    writers = sorted(p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if words in p.read_text())
    assert writers == ["validate.py"]
