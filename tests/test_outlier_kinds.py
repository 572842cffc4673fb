"""Two kinds of outliers: a massive activation (a few tokens) and an outlier feature (a dim large on most tokens).

Each model carries both, planted through its own weights (`feature_planting.two_kinds`): dim 4 of every
MARK token is massive from block 2; dim 9 is large on every token from block 0. A Gemma-3 model (sandwich
norms) whose tokenizer starts every text with MARK, as a BOS, and a Qwen2 model whose tokenizer adds nothing
(MARK then sits inside the text). Every token-based step must find the MARK tokens, never all tokens.
"""

from __future__ import annotations

import json

import pytest
import torch
from feature_planting import two_kinds
from planting import MARK, VOCAB, word_tokenizer
from rich.console import Console

from massact.attention import AttentionConfig
from massact.attention import run as attention_run
from massact.corpus import CorpusConfig
from massact.corpus import run as corpus_run
from massact.detect import FEATURE, MASSIVE, Thresholds, feature_dims
from massact.errors import MassactError
from massact.interventions import InterventionConfig
from massact.interventions import run as intervene_run
from massact.interventions.survey import Survey
from massact.models.loading import LoadedModel
from massact.quant import QuantConfig, QuantInputs, calibrate
from massact.quant import run as quant_run
from massact.scan import ScanConfig
from massact.scan import run as scan_run
from massact.stream import StreamConfig, cut_stream
from massact.stream import run as stream_run

MASSIVE_DIM, FEATURE_DIM, MASSIVE_BLOCK = 4, 9, 2
FAMILIES = [("gemma3", True), ("qwen2", False)]


def word(i: int) -> str:
    return f"w{i:02d}"  # one width: a text cut anywhere never splits a word into two known words


@pytest.fixture(scope="module", params=FAMILIES, ids=[f for f, _ in FAMILIES])
def case(request) -> tuple[LoadedModel, bool]:
    family, bos = request.param
    model, plant, feature = two_kinds(family, massive_block=MASSIVE_BLOCK)
    assert (plant.dim, plant.block, feature) == (MASSIVE_DIM, MASSIVE_BLOCK, FEATURE_DIM)
    return LoadedModel(model=model, tokenizer=word_tokenizer(word, bos), name=f"tiny-{family}"), bos


def windows(rows: int, length: int, bos: bool, seed: int) -> torch.Tensor:
    """Random ids with MARK first (the BOS) or, without a BOS, MARK at positions 5 and 11."""
    ids = torch.randint(10, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, [0] if bos else [5, 11]] = MARK
    return ids


def marks(ids: torch.Tensor) -> list[int]:
    return (ids == MARK).nonzero()[:, -1].tolist()


# ---- the criterion ------------------------------------------------------------------------------------------


def test_a_dim_on_most_tokens_is_an_outlier_feature():
    t = Thresholds()
    assert t.feature_share == 0.5 and t.to_json() == {"abs": 100.0, "ratio": 1000.0, "feature_share": 0.5}
    assert t.is_feature(5, 8) and not t.is_feature(4, 8)  # more than half
    assert not t.is_feature(3, 3)  # a short prompt's BOS and delimiters are never a feature
    assert t.is_feature(100, 128) and not t.is_feature(2, 128)
    assert Thresholds(feature_share=0.25).is_feature(33, 128)
    assert torch.equal(t.is_feature(torch.tensor([3, 5, 9]), 8), torch.tensor([False, True, True]))
    assert Thresholds.from_json({"abs": 50, "ratio": 10}) == Thresholds(abs=50, ratio=10)  # older files
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(MassactError, match="feature_share"):
            Thresholds(feature_share=bad)
    # dim 9 passes on 5 of 6 tokens in block 0 (the block where it passes on the most); dim 4 on one
    assert feature_dims([torch.tensor([9, 9, 9, 9, 9, 4]), [9, 4]], 6, t) == {9: 5 / 6}


# ---- scan, corpus, attention ---------------------------------------------------------------------------------


def test_scan_reports_the_massive_tokens_and_the_feature_apart(case, tmp_path):
    loaded, bos = case
    ids = windows(1, 16, bos, seed=1)
    result = scan_run(loaded, ids, ScanConfig())
    summary = result.to_json()["summary"]
    assert summary["dims"] == [MASSIVE_DIM] and summary["first_block"] == MASSIVE_BLOCK
    assert sorted(s["token"] for s in summary["sites"]) == marks(ids)
    assert all(s["kind"] == MASSIVE and s["token_share"] == len(marks(ids)) / 16 for s in summary["sites"])
    (feature,) = summary["features"]
    assert feature["dim"] == FEATURE_DIM and feature["kind"] == FEATURE and feature["first_block"] == 0
    assert feature["num_tokens"] == 16 and feature["token_share"] == 1.0  # planted on every token
    # the flagged entries stay complete: the feature is there on every token
    assert {m.token for m in result.massive if m.dim == FEATURE_DIM and m.block == 0} == set(range(16))
    console = Console(record=True, width=200)
    result.show(console)
    assert "Outlier feature (not a massive activation): dim 9 passes the criterion on 16 of 16" in console.export_text()
    result.write(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert f"appear at block {MASSIVE_BLOCK}" in report and "**Outlier features**" in report
    assert "| 9 | 16 of 16 (100%) | 0-" in report


def test_corpus_reports_the_feature_apart(case, tmp_path):
    loaded, bos = case
    words = torch.randint(10, VOCAB, (1200,), generator=torch.Generator().manual_seed(3))
    words[::7] = MARK
    corpus = tmp_path / "words.txt"
    corpus.write_text(" ".join(word(int(i)) for i in words), encoding="utf-8")
    result = corpus_run(loaded, str(corpus), CorpusConfig(samples=4, seq_len=24, batch_size=4, progress=False))
    data = result.to_json()
    (feature,) = data["outlier_features"]
    assert feature["dim"] == FEATURE_DIM and feature["token_share"] == 1.0
    kinds = {(r["dim"], r["kind"]) for r in data["sites"]}
    assert kinds == {(MASSIVE_DIM, MASSIVE), (FEATURE_DIM, FEATURE)}
    main = [g for g in data["groups"] if g["kind"] == MASSIVE]
    assert {g["dim"] for g in main} == {MASSIVE_DIM} and main[0]["emerge_block"] == MASSIVE_BLOCK
    out = tmp_path / "out"
    out.mkdir()
    result.write(out)
    report = (out / "report.md").read_text()
    table = report.split("## Massive activations")[1].split("## Figures")[0]
    assert "| 4 |" in table and "| 9 |" not in table.split("Outlier features")[0]
    assert "dim 9 on 100% of the tokens" in report
    console = Console(record=True, width=200)
    result.show(console)
    assert "dim 9 on 100% of the tokens" in console.export_text()


def test_attention_c_is_the_massive_tokens_only(case):
    loaded, bos = case
    ids = windows(1, 16, bos, seed=2)
    result = attention_run(loaded, ids, AttentionConfig(intervene=False))
    assert result.sequences[0].sinks == marks(ids)  # not the 16 tokens the feature is large on
    data = json.loads(json.dumps(result.to_json()))
    assert data["first_massive_block"] == MASSIVE_BLOCK
    assert data["sequences"][0]["outlier_features"] == [{"dim": FEATURE_DIM, "token_share": 1.0}]
    console = Console(record=True, width=300)
    result.show(console)
    assert "outlier feature left out of C: dim 9 (100% of tokens)" in console.export_text().replace("\n", " ")


# ---- quant, stream, intervene --------------------------------------------------------------------------------


def test_outlier_tokens_are_the_massive_tokens_and_their_share_is_reported(case):
    loaded, bos = case
    calib = calibrate(loaded, windows(3, 24, bos, seed=5), thresholds=Thresholds(), progress=False)
    assert calib.features == {FEATURE_DIM: 1.0}
    assert (calib.first_positions, calib.token_ids) == ((1, []) if bos else (0, [MARK]))
    assert calib.massive_blocks == [MASSIVE_BLOCK, MASSIVE_BLOCK + 1]
    evaluated = windows(2, 24, bos, seed=9)
    expected = float((evaluated == MARK).float().mean())  # exactly the MARK tokens are kept
    assert calib.kept_share(evaluated) == pytest.approx(expected)
    inputs = QuantInputs(windows=evaluated, calibration=windows(3, 24, bos, seed=5))
    config = QuantConfig(schemes=("A8",), strategies=("none", "outlier-tokens"), sensitivity=None, progress=False)
    result = quant_run(loaded, inputs, config)
    data = result.to_json()
    assert [r["kept_token_share"] for r in data["rows"]] == [0.0, pytest.approx(expected)]
    assert data["outlier_tokens"]["kept_token_share"] == pytest.approx(expected)
    assert data["outlier_tokens"]["outlier_features"] == [{"dim": FEATURE_DIM, "token_share": 1.0}]
    console = Console(record=True, width=300)
    result.show(console)
    text = console.export_text().replace("\n", " ")
    assert f"; {expected:.1%} of the evaluated tokens kept in full precision" in text
    assert "outlier features, which mark no token, left out: dim 9 on 100% of tokens" in text


def test_stream_detected_keeps_the_massive_tokens_only(case):
    loaded, bos = case
    ids = windows(1, 40, bos, seed=3)[0]
    text = " ".join(word(int(i)) for i in ids[1 if bos else 0 :])  # with a BOS, the tokenizer adds MARK itself
    stream = cut_stream(loaded.tokenizer, text, offset=0, tokens=40, source="w")
    assert stream.ids.tolist() == ids.tolist()
    result = stream_run(loaded, stream, StreamConfig(policies="detected", cache=16, score_from=33, progress=False))
    assert result.runs[0].kept == marks(ids[None])
    found = result.to_json()["detected"]["tokens"]
    assert {t["dim"] for t in found} == {MASSIVE_DIM} and min(found[0]["massive_blocks"]) == MASSIVE_BLOCK


@pytest.mark.parametrize(("family", "bos"), FAMILIES)
def test_intervene_defaults_to_the_largest_massive_site_not_the_earlier_ones(family, bos):
    # a small massive activation (the raised carrier, dim 3 of MARK) and the feature appear at block 0
    model, _, _ = two_kinds(family, massive_block=MASSIVE_BLOCK, carrier=150.0)
    loaded = LoadedModel(model=model, tokenizer=word_tokenizer(word, bos), name=f"tiny-{family}")
    data = windows(12, 24, bos, seed=4)
    config = InterventionConfig(
        corpora=["a"], samples=4, seq_len=24, modes=("original", "zero"), means_samples=8, batch_size=4, progress=False
    )
    result = intervene_run(loaded, {"a": data}, config)
    assert result.blocks == [MASSIVE_BLOCK]  # the largest site's first block; the feature is no massive activation
    assert result.survey.features == {FEATURE_DIM: 1.0}
    assert result.survey.first_block == 0 and result.survey.dims_at(0) == [3]
    assert {row["dim"] for row in result.survey.dim_spans()} == {3, MASSIVE_DIM}
    zero = next(r for r in result.rows if r["mode"] == "zero")
    at_block = result.survey.dims_at(MASSIVE_BLOCK)  # dim 4 (and, on Qwen2, the carrier dim 3 still), never 9
    assert MASSIVE_DIM in at_block and set(at_block) <= {3, MASSIVE_DIM}
    assert zero["sites"] == int((data[:4] == MARK).sum()) * len(at_block)  # on the MARK tokens only
    assert zero["sites_by_block"] == {str(MASSIVE_BLOCK): zero["sites"]}
    assert "outlier features, large on most tokens and never rewritten by default: dim 9" in result.markdown()


def test_the_default_block_is_the_first_of_the_largest_site():
    def block(index: int, dims: list[tuple[int, float]]) -> dict:
        entries = [{"dim": d, "fraction": 1.0, "peak": p, "token_kinds": {}} for d, p in dims]
        return {"block": index, "massive_dims": entries, "top_dim": None, "top_value": None, "top_ratio": None}

    # a small few-token site in block 0, the main one (20,000) from block 2
    blocks = [block(0, [(5, 300.0)]), block(1, [(5, 280.0)]), block(2, [(4, 20000.0)]), block(3, [(4, 19000.0)])]
    survey = Survey(sequences=4, num_blocks=4, hidden_size=32, blocks=blocks, means=None)
    assert survey.first_block == 0 and survey.main_block == 2
    assert survey.to_json()["main_block"] == 2


@pytest.mark.parametrize(("family", "bos"), FAMILIES)
def test_zeroing_a_token_depends_only_on_the_tokens_up_to_it(family, bos):
    """The hooks skip the survey's feature dims, so a prefix gets the same rewrite alone, in a longer text, or
    padded in a batch (a rule judged on the whole sequence would flip with what follows)."""
    from massact.interventions import SiteSpec, mode_context

    model, _, _ = two_kinds(family, massive_block=MASSIVE_BLOCK)
    loaded = LoadedModel(model=model, tokenizer=word_tokenizer(word, bos), name=f"tiny-{family}")
    ids = windows(1, 24, bos, seed=5)
    short = ids[:, :3]  # too few tokens for any rule judged on them to call dim 9 a feature; 24 are enough
    sites = SiteSpec(features=(FEATURE_DIM,))

    def logits(x: torch.Tensor, spec: SiteSpec) -> torch.Tensor:
        with torch.no_grad(), mode_context(loaded, None, spec, "zero", None, str(MASSIVE_BLOCK)):
            return model(input_ids=x).logits

    alone, within = logits(short, sites), logits(ids, sites)[:, :3]
    torch.testing.assert_close(alone, within, rtol=1e-5, atol=1e-5)
    padded = torch.cat([ids, torch.cat([short, torch.full((1, 21), MARK)], 1)])  # MARK padding: massive too
    torch.testing.assert_close(logits(padded, sites)[1:, :3], alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    # the feature is left alone: only the MARK tokens' dim 4 is zeroed, so the tokens before the first MARK keep
    # their plain logits; naming no feature zeroes dim 9 on every token, which changes them
    first = marks(ids)[0]
    if first > 0:
        torch.testing.assert_close(logits(ids, sites)[:, :first], plain[:, :first])
    assert not torch.allclose(logits(ids, SiteSpec())[:, : first + 1], plain[:, : first + 1])
