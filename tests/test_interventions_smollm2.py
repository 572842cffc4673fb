"""The paper's intervention result on the bundled SmolLM2, on short Shakespeare windows."""

from __future__ import annotations

import pytest
import torch

from massact.interventions import InterventionConfig, run


@pytest.mark.slow
def test_zero_explodes_mean_and_random_do_not(smollm2):
    before = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    config = InterventionConfig(samples=2, seq_len=128, means_samples=4, batch_size=2, progress=False)
    result = run(smollm2, None, config)
    assert result.blocks == [11]  # the main massive activation; the wave at blocks 1-9 is below 1000x the median
    spans = {row["dim"]: row["blocks"] for row in result.survey.dim_spans()}
    assert spans[507][0] == 11 and 27 in spans[507]
    ppl = {row["mode"]: row["perplexity"] for row in result.rows}
    assert ppl["zero"] > 10 * ppl["original"]
    assert ppl["mean"] == pytest.approx(ppl["original"], rel=0.02)
    assert ppl["random"] == pytest.approx(ppl["original"], rel=0.02)
    assert all(row["sites"] >= 2 for row in result.rows if row["mode"] != "original")  # token 0 of each window
    after = smollm2.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
