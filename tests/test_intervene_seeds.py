"""intervene --seeds N: the whole run repeated on windows drawn with N seeds, mean and spread per mode."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from cli_runner import run as run_cli
from planting import MARK, VOCAB, letter_word, planted_with_words

from massact.errors import MassactError
from massact.interventions import InterventionConfig, run


def _text() -> str:
    ids = torch.randint(10, VOCAB, (1500,), generator=torch.Generator().manual_seed(5))
    ids[::13] = MARK
    return " ".join(letter_word(int(i)) for i in ids)


CONFIG = InterventionConfig(samples=2, seq_len=16, means_samples=2, block="1", batch_size=4, progress=False)


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_seeds_repeat_the_run_and_report_each_mode_spread(family):
    loaded = planted_with_words(family)
    texts = {"words": [_text()]}
    result = run(loaded, texts, InterventionConfig(**{**CONFIG.__dict__, "seed": 2, "seeds": 3}))
    alone = [run(loaded, texts, InterventionConfig(**{**CONFIG.__dict__, "seed": s})) for s in (2, 3, 4)]
    data = result.to_json()
    assert data["seeds"]["seeds"] == [2, 3, 4] and data["seed"] == 2
    assert data["rows"] == alone[0].to_json()["rows"]
    for index, row in enumerate(data["seeds"]["rows"]):
        values = [a.rows[index]["perplexity"] for a in alone]
        assert row["mode"] == alone[0].rows[index]["mode"] and row["perplexity"]["values"] == values
        assert row["perplexity"]["mean"] == pytest.approx(statistics.fmean(values))
        assert row["perplexity"]["std"] == pytest.approx(float(np.std(values, ddof=1)))
    assert "mean ± sd, 3 seeds" in result.markdown()


def test_seeds_refuse_windows_already_cut_and_a_count_below_one(tmp_path, capsys):
    loaded = planted_with_words("qwen2")
    windows = torch.randint(10, VOCAB, (4, 16))
    with pytest.raises(MassactError, match="`seeds` > 1 draws new windows"):
        run(loaded, {"cut": windows}, InterventionConfig(**{**CONFIG.__dict__, "seeds": 2}))
    code, _, stderr = run_cli(["intervene", "--seeds", "0", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--seeds 0: must be at least 1" in stderr and not (tmp_path / "o").exists()
