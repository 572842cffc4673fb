"""quant's rewrite advice: true in each case (best run or not, a fold won or not, refused or not), the scheme named
by its activation scales in both commands, and the pasted rewrite drawing the windows quant measured."""

from __future__ import annotations

import dataclasses
import shlex

import pytest
from planting import marked_windows as windows
from planting import planted_for_quant as planted

from massact.cli import build_command
from massact.errors import MassactError
from massact.quant import QuantConfig, QuantInputs, run
from massact.quant.advice import CHECK_SCHEME, winners
from massact.quant.strategies import parts

RMSNORM_FAMILIES = ("llama", "qwen2")  # the rewrite folds a rotation into these; GPT-2's LayerNorm refuses it


def measured(family: str, schemes: tuple[str, ...], strategies: tuple[str, ...], **config):
    loaded = planted(family)
    inputs = QuantInputs(windows=windows(3, seed=1), calibration=windows(2, seed=2), corpus="planted text", seed=1)
    quant = QuantConfig(schemes=schemes, strategies=strategies, sensitivity=None, progress=False, **config)
    return run(loaded, inputs, quant)


def suggested(line: str) -> list[str]:
    """The command between backticks, as argv."""
    return shlex.split(line.split("`")[1])


def rewrite_params(argv: list[str]) -> dict:
    """What `massact rewrite` parses the suggested command into (click's own parser; nothing runs)."""
    assert argv[:2] == ["massact", "rewrite"]
    command = build_command().commands["rewrite"]
    with command.make_context("rewrite", argv[2:]) as ctx:
        return ctx.params


def with_winner(result, scheme: str, strategy: str):
    """`result` with `strategy` made the lowest perplexity of `scheme` (its other rows unchanged)."""
    rows = [dict(r) for r in result.rows]
    low = min(r["perplexity"] for r in rows if r["scheme"] == scheme)
    for row in rows:
        if row["scheme"] == scheme and row["strategy"] == strategy:
            row["perplexity"] = low * 0.5
            row["ratio"] = row["perplexity"] / result.baseline["perplexity"]
    return dataclasses.replace(result, rows=rows)


@pytest.mark.parametrize("family", RMSNORM_FAMILIES)
def test_the_lowest_strategy_run_decides_when_best_was_not_run(family):
    result = measured(family, ("W8A8",), ("none", "rotate"))
    assert result.best == {}
    line = result.rewrite_line()
    won = min((r for r in result.rows), key=lambda r: r["perplexity"])  # what the advice must follow
    assert "best" not in line  # best did not run: the line never says it chose anything
    if won["strategy"] == "rotate":
        assert "--rotate" in suggested(line)
    else:
        assert line.startswith("No rewrite suggested: the winning strategies fold no rotation or smoothing")
    rotate_won = with_winner(result, "W8A8", "rotate")  # the case: rotate won, best not run
    line = rotate_won.rewrite_line()
    assert not line.startswith("No rewrite suggested") and "rotate, the lowest perplexity of the strategies run" in line
    argv = suggested(line)
    assert "--rotate" in argv and argv[argv.index("--out") + 1] == f"planted-{family}-rotated"
    params = rewrite_params(argv)  # the windows quant measured, drawn again by the rewrite
    assert params["corpus"] == "planted text" and params["samples"] == 3 and params["seq_len"] == 24
    assert params["calib_samples"] == 2 and params["seed"] == 1 and params["batch_size"] == 4
    assert params["check_quant"] == "w8a8" and params["rotate"]
    # quant measured dynamic scales; the check is static: the line says so and names the static scheme
    assert "W8A8 (dynamic per-tensor) measured here" in line and f"measures {CHECK_SCHEME} (static per-tensor" in line


@pytest.mark.parametrize("family", RMSNORM_FAMILIES)
def test_the_check_scheme_is_named_as_quant_names_it(family, tmp_path):
    result = with_winner(measured(family, ("W8A8", "W8A8-static"), ("none", "rotate")), CHECK_SCHEME, "rotate")
    line = result.rewrite_line()
    assert "--rotate" in suggested(line)
    static = next(w for w in winners(result) if w["scheme"] == CHECK_SCHEME)
    assert static["strategy"] == "rotate"
    assert "W8A8-static (static per-tensor scales), which this run measured too" in line
    result.write(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert (
        "| W8A8 | dynamic per-tensor | rotate |" in report and "| W8A8-static | static per-tensor | rotate |" in report
    )
    schemes = {s["name"]: s["act_scales_label"] for s in result.to_json()["schemes"]}
    assert schemes == {"W8A8": "dynamic per-tensor", "W8A8-static": "static per-tensor"}
    # static measured, but a fold lost there: the line says the check will show little gain
    lost = with_winner(with_winner(result, "W8A8", "rotate"), CHECK_SCHEME, "none")
    assert "found none best" in lost.rewrite_line() and "not rotate" in lost.rewrite_line()


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_each_no_rewrite_line_says_why(family):
    plain = measured(family, ("W8A8",), ("none", "outlier-tokens"))
    assert plain.rewrites is None  # nothing foldable measured: the model's rewrites are not even mapped
    assert "no strategy run here is one a rewrite folds (rotate, smooth)" in plain.rewrite_line()
    chosen = measured(family, ("W8A8",), ("none", "best"), best_samples=1)
    picked = chosen.best["W8A8"]["chosen"]
    line = chosen.rewrite_line()
    assert f"{picked}, chosen by `best`" in line
    if not {"rotate", "smooth"} & parts(picked):
        assert line.startswith("No rewrite suggested: the winning strategies fold no rotation or smoothing")


def test_a_rotation_the_rewrite_refuses_is_not_measured_nor_suggested():
    """quant's rotate is the rewrite's: on GPT-2 (LayerNorm) it is refused, and `best` does not try it."""
    with pytest.raises(MassactError, match="rotate: .*LayerNorm"):
        measured("gpt2", ("W8A8",), ("none", "rotate"))
    chosen = measured("gpt2", ("W8A8",), ("none", "best"), best_samples=1)
    assert "rotate" not in chosen.best["W8A8"]["chosen"] and "LayerNorm" in chosen.rewrites["rotate"]
    assert "--rotate" not in chosen.rewrite_line()
    smooth = with_winner(measured("gpt2", ("W8A8",), ("none", "smooth")), "W8A8", "smooth")
    assert smooth.rewrites["smooth"] is None and "--smooth" in suggested(smooth.rewrite_line())
    # a fold that won where the rewrite refuses it is not suggested (a rotate row written in by hand)
    rows = [r | {"strategy": "rotate"} if r["strategy"] == "smooth" else r for r in smooth.rows]
    line = dataclasses.replace(smooth, rows=rows).rewrite_line()
    assert line.startswith("No rewrite suggested: rotate won") and smooth.rewrites["rotate"] in line
