"""Windows start the way the tokenizer starts a text: BOS-adding and plain tokenizers built in the test.

The BOS-adding tokenizer (LLaMA/Gemma style) puts `<s>` (id MARK) before every text; the planted models
write a massive activation on the input token MARK, so on BOS windows it sits on the BOS of every window.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run as run_cli
from planting import MARK, VOCAB, plant_massive, tiny_model
from planting import assert_same_summary as _assert_same
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from massact import corpus, interventions
from massact.corpus import CorpusConfig, CorpusInputs, CorpusSummary
from massact.data import (
    corpus_windows,
    load_texts,
    prefix_tokens,
    read_text_file,
    text_prefix,
    token_windows,
)
from massact.errors import MassactError
from massact.interventions import InterventionConfig, SiteSpec, evaluate_perplexity, mode_context
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure

PLANT_BLOCK, PLANT_DIM = 1, 11
SPECIALS = {"<unk>": 0, "<pad>": 1, "</s>": 2, ".": 3, ",": 4, "!": 5, "?": 6, "<s>": MARK, ";": 8, ":": 9}
WORDS = [f"w{i}" for i in range(10, VOCAB)]


def make_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `VOCAB` ids; with `bos`, every text starts with `<s>` (id MARK)."""
    vocab = SPECIALS | {word: 10 + i for i, word in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", MARK)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def make_texts(count: int = 6, words: int = 300) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    texts = []
    for _ in range(count):
        picks = torch.randint(0, len(WORDS), (words,), generator=generator).tolist()
        texts.append(" ".join(WORDS[p] + (" ." if i % 9 == 8 else "") for i, p in enumerate(picks)))
    return texts


TEXTS = make_texts()


def loaded_model(family: str, bos: bool) -> LoadedModel:
    model = tiny_model(family)
    plant_massive(model, block=PLANT_BLOCK, dim=PLANT_DIM)
    return LoadedModel(model=model, tokenizer=make_tokenizer(bos), name=f"tiny-{family}")


@pytest.fixture(scope="module", params=["llama", "gemma"])
def bos_model(request) -> LoadedModel:
    return loaded_model(request.param, bos=True)


@pytest.fixture(scope="module", params=["gpt2", "qwen2"])
def plain_model(request) -> LoadedModel:
    return loaded_model(request.param, bos=False)


def old_windows(tokenizer, texts, samples, seq_len, seed=0) -> torch.Tensor:
    """The windows as cut before prefixes existed: the joined stream in chunks of `seq_len`."""
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for i, text in enumerate(texts):
        stream += (sep if i else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor(stream)
    available = ids.numel() // seq_len
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:samples]
    return ids[: available * seq_len].view(available, seq_len)[order]


# -- the windows ---------------------------------------------------------------------------------
def test_text_prefix_is_what_the_tokenizer_puts_before_a_text():
    assert text_prefix(make_tokenizer(bos=True)) == [MARK]
    assert text_prefix(make_tokenizer(bos=False)) == []
    assert prefix_tokens(make_tokenizer(bos=True)) == ["<s>"]
    assert prefix_tokens(make_tokenizer(bos=True), add_special_tokens=False) == []
    assert text_prefix(None) == []


def test_bos_windows_are_bos_then_text_tokens():
    tok = make_tokenizer(bos=True)
    windows, index = corpus_windows(tok, TEXTS, samples=5, seq_len=16, seed=2)
    assert windows.shape == (5, 16)
    assert (windows[:, 0] == MARK).all() and (windows[:, 1:] != MARK).all()
    # the text part is the stream cut in chunks of seq_len - 1, at the same indices
    text = old_windows(tok, TEXTS, 10_000, 15, seed=2)
    chunks = {tuple(row.tolist()) for row in text}
    assert all(tuple(row[1:].tolist()) in chunks for row in windows)
    assert len(set(index)) == 5
    # --no-special-tokens: text tokens only, exactly the plain tokenizer's windows
    plain = token_windows(tok, TEXTS, 5, 16, seed=2, add_special_tokens=False)
    assert torch.equal(plain, token_windows(make_tokenizer(bos=False), TEXTS, 5, 16, seed=2))


def test_plain_tokenizer_windows_are_unchanged():
    tok = make_tokenizer(bos=False)
    assert torch.equal(token_windows(tok, TEXTS, 7, 24, seed=3), old_windows(tok, TEXTS, 7, 24, seed=3))


def test_seq_len_must_leave_room_for_text():
    with pytest.raises(MassactError, match="at least 2"):
        token_windows(make_tokenizer(bos=True), TEXTS, 2, 1)


def test_scored_tokens_with_and_without_bos(bos_model):
    windows = token_windows(bos_model.tokenizer, TEXTS, 3, 12)
    result = evaluate_perplexity(bos_model.model, windows, progress=False, prefix_len=1)
    assert result.tokens == 3 * 11
    windows = torch.cat([torch.full((3, 2), MARK), windows[:, 1:]], dim=1)  # a two-token prefix
    result = evaluate_perplexity(bos_model.model, windows, progress=False, prefix_len=2)
    assert result.tokens == 3 * 11


# -- the corpus scan -----------------------------------------------------------------------------
def test_massive_on_bos_in_every_window_and_its_kind_is_first(bos_model):
    config = CorpusConfig(samples=6, seq_len=16, batch_size=4, progress=False)
    result = corpus.run(bos_model, CorpusInputs("words", TEXTS), config)
    summary = result.summary
    assert summary.prefix_tokens == ["<s>"] and result.to_json()["prefix_tokens"] == ["<s>"]
    for block in range(PLANT_BLOCK, len(find_structure(bos_model.model))):
        site = summary.sites[(block, PLANT_DIM, "first")]
        assert site.sequences == 6 and site.count == 6 and site.tokens == {"<s>": 6}
    assert not any(kind != "first" for (_, dim, kind) in summary.sites if dim == PLANT_DIM)
    plain = corpus.run(bos_model, CorpusInputs("words", TEXTS), CorpusConfig(samples=6, seq_len=16,
                                                      add_special_tokens=False, progress=False))  # fmt: skip
    assert plain.summary.prefix_tokens == [] and not plain.summary.sites


def test_plain_tokenizer_has_no_prefix_and_no_bos_site(plain_model):
    result = corpus.run(plain_model, CorpusInputs("words", TEXTS), CorpusConfig(samples=4, seq_len=16, progress=False))
    assert result.summary.prefix_tokens == [] and not result.summary.sites
    assert result.summary.sources == ["words|seq_len=16"]


def test_shards_merge_into_the_whole(bos_model, tmp_path):
    config = CorpusConfig(samples=7, seq_len=16, batch_size=3, progress=False)
    whole = corpus.run(bos_model, CorpusInputs("words", TEXTS), config).summary
    parts = []
    for i in range(2):
        part = corpus.run(bos_model, CorpusInputs("words", TEXTS), CorpusConfig(**{**config.__dict__, "shard": (i, 2)}))
        assert part.summary.num_sequences == (4, 3)[i]
        (tmp_path / str(i)).mkdir()
        part.summary.save(tmp_path / str(i))  # the mergeable state (the figures are not needed here)
        parts.append(tmp_path / str(i))
    _assert_same(corpus.merge(parts).summary, whole)
    assert corpus.merge(parts).summary.prefix_tokens == ["<s>"]


def test_shard_spec_errors():
    with pytest.raises(MassactError, match="give i/n"):
        corpus.parse_shard("half")
    with pytest.raises(MassactError, match="0 <= i < n"):
        corpus.parse_shard("2/2")
    with pytest.raises(MassactError, match="more parts than"):
        CorpusConfig(samples=2, shard=(0, 3))


# -- interventions -------------------------------------------------------------------------------
def test_interventions_with_a_bos_prefix(bos_model):
    config = InterventionConfig(
        corpora=("words",), samples=4, seq_len=16, block=str(PLANT_BLOCK), means_samples=4, batch_size=4,
        progress=False,
    )  # fmt: skip
    result = interventions.run(bos_model, {"words": TEXTS}, config)
    rows = {r["mode"]: r for r in result.rows}
    assert all(r["tokens"] == 4 * 15 for r in rows.values())  # BOS never scored
    assert result.to_json()["prefix_tokens"] == ["<s>"]
    assert rows["zero"]["sites"] == rows["mean"]["sites"] == rows["random"]["sites"] == 4  # the BOS of each window
    assert result.means.entries.keys() >= {(PLANT_BLOCK, PLANT_DIM, "first")}
    # the BOS state does not depend on the text: its mean is its value, so mean changes nothing
    assert rows["mean"]["nll"] == pytest.approx(rows["original"]["nll"], abs=1e-5)
    assert abs(rows["zero"]["nll"] - rows["original"]["nll"]) > 1e-3
    assert rows["random"]["nll"] != rows["zero"]["nll"]
    assert "scored tokens" in result.scored_line() and "<s>" in result.scored_line()


def test_mode_context_runs_any_evaluator_under_a_mode(bos_model):
    windows = token_windows(bos_model.tokenizer, TEXTS, 3, 12)
    base = evaluate_perplexity(bos_model.model, windows, progress=False, prefix_len=1).nll
    with mode_context(bos_model, None, SiteSpec(), "zero", None, str(PLANT_BLOCK)) as hooks:
        zeroed = evaluate_perplexity(bos_model.model, windows, progress=False, prefix_len=1).nll
    assert hooks.counts.sites == {PLANT_BLOCK: 3} and zeroed != base
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in bos_model.model.modules())
    assert evaluate_perplexity(bos_model.model, windows, progress=False, prefix_len=1).nll == base


def test_means_over_the_evaluated_windows_are_flagged(bos_model, tmp_path):
    scan = corpus.run(bos_model, CorpusInputs("words", TEXTS), CorpusConfig(samples=8, seq_len=16, progress=False))
    (tmp_path / "means.json").write_text(json.dumps(scan.summary.means()))
    means = interventions.read_means(tmp_path)
    config = InterventionConfig(
        corpora=("words",), samples=3, seq_len=16, block="1", means=means, modes=("original", "mean"), progress=False
    )
    result = interventions.run(bos_model, {"words": TEXTS}, config)
    assert any("3 of the 3 evaluated words windows" in note for note in result.notes)
    other = InterventionConfig(**{**config.__dict__, "seed": 5, "samples": 1})
    drawn = corpus_windows(bos_model.tokenizer, TEXTS, 1, 16, seed=5)[1]
    shared = set(drawn) & set(means.windows[scan.summary.sources[0]])
    flagged = any("evaluated words windows" in n for n in interventions.run(bos_model, {"words": TEXTS}, other).notes)
    assert flagged == bool(shared)


def test_token_positions_and_dims_are_checked_up_front(plain_model):
    with pytest.raises(MassactError, match="`tokens=500` is out of range"):
        InterventionConfig(seq_len=64, sites=SiteSpec(tokens=(500,)))
    config = InterventionConfig(corpora=("words",), samples=2, seq_len=16, sites=SiteSpec(dims=(40,)), progress=False)
    with pytest.raises(MassactError, match="`dims=40` is out of range"):
        interventions.run(plain_model, {"words": TEXTS}, config)


def test_sites_per_window_for_every_corpus(bos_model):
    config = InterventionConfig(
        corpora=("a", "b"), samples=2, seq_len=16, block="1", modes=("original", "zero"), progress=False
    )
    result = interventions.run(bos_model, {"a": TEXTS, "b": TEXTS[::-1]}, config)
    assert result._columns() == ["a", "b", "sites / window (a)", "sites / window (b)"]
    assert result._cells("zero")[2:] == ["1.0", "1.0"]
    assert "sites / window (b)" in result.markdown()


# -- text files and the command line -------------------------------------------------------------
def test_byte_order_mark_is_stripped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfw10 w11 .")
    assert read_text_file(path) == "w10 w11 ."
    assert load_texts(str(path)) == ["w10 w11 ."]
    (tmp_path / "rows.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "w12"}\n')
    assert load_texts(str(tmp_path / "rows.jsonl")) == ["w12"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The planted LLaMA with the BOS tokenizer, and a corpus file, saved for the command line."""
    folder = tmp_path_factory.mktemp("bos-llama")
    loaded = loaded_model("llama", bos=True)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    (folder / "words.txt").write_text("\n\n".join(TEXTS), encoding="utf-8")
    return folder


def test_intervene_cli_records_the_prefix(saved, tmp_path, capsys):
    base = ["intervene", str(saved), "--corpus", str(saved / "words.txt"), "--samples", "2", "--seq-len", "16"]
    base += ["--block", "1", "--means-samples", "2", "--device", "cpu"]
    code, stdout, _ = run_cli([*base, "--json", "--out", str(tmp_path / "bos")], capsys)
    assert code in (0, None)
    data = json.loads(stdout)
    assert data["prefix_tokens"] == ["<s>"] and data["scored_tokens_per_window"] == 15
    assert json.loads((tmp_path / "bos" / "intervene.json").read_text()) == data
    code, stdout, err = run_cli([*base, "--no-special-tokens", "--modes", "original,zero,random", "--json"], capsys)
    assert code in (0, None), err
    data = json.loads(stdout)
    assert data["prefix_tokens"] == [] and all(r["tokens"] == 2 * 15 for r in data["rows"])
    assert all(r["sites"] == 0 for r in data["rows"])  # no BOS: the planted site is never there


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tokens", "--tokens 40 is out of range"),
        ("dims", "--dims 99 is out of range"),
        ("samples", "--samples 0"),
        ("corpus", "no such corpus"),
        ("block", "give a block index"),
    ],
)
def test_intervene_bad_input(saved, tmp_path, capsys, case, message):
    argv = ["intervene", str(saved), "--corpus", str(saved / "words.txt"), "--seq-len", "16", "--device", "cpu"]
    argv += {
        "tokens": ["--tokens", "40"],
        "dims": ["--dims", "99", "--block", "1"],
        "samples": ["--samples", "0"],
        "corpus": ["--corpus", "nope"],
        "block": ["--block", "x"],
    }[case]
    out = tmp_path / "out"
    code, _, stderr = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_merge_paths_must_hold_a_summary(saved, tmp_path, capsys):
    scan = corpus.run(loaded_model("llama", bos=True), CorpusInputs("words", TEXTS),
                      CorpusConfig(samples=2, seq_len=16, progress=False))  # fmt: skip
    (tmp_path / "a").mkdir()
    scan.summary.save(tmp_path / "a")
    (tmp_path / "a" / "corpus.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "a" / "typo_dir", tmp_path / "empty", tmp_path / "a" / "corpus.json"):
        out = tmp_path / "merged"
        code, _, stderr = run_cli(["merge", str(tmp_path / "a"), str(bad), "--out", str(out)], capsys)
        assert code == 2 and str(bad) in stderr and len(stderr.strip().splitlines()) == 1
        assert not out.exists()
    other = corpus.run(loaded_model("gemma", bos=True), CorpusInputs("words", TEXTS),
                       CorpusConfig(samples=2, seq_len=16, progress=False))  # fmt: skip
    other.summary.save(tmp_path / "empty")  # now a scan of another model
    code, _, stderr = run_cli(["merge", str(tmp_path / "a"), str(tmp_path / "empty"), "--out", str(out)], capsys)
    assert code == 2 and "different model" in stderr and not out.exists()
    code, stdout, _ = run_cli(["merge", str(tmp_path / "a"), "--json"], capsys)
    assert code in (0, None) and json.loads(stdout)["prefix_tokens"] == ["<s>"]
    assert CorpusSummary.load(tmp_path / "a" / "summary.json").num_sequences == 2


def test_device_medians_equal_the_host_medians():
    """The sort-based median (used on accelerators, no read-back) equals the per-row host median."""
    from massact.interventions.medians import device_medians, sequence_medians

    mags = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(0))
    mags[0, 2, 1] = float("nan")
    mags[1, 4, 0] = float("inf")
    mags[2] = float("nan")  # nothing finite: NaN, which selects nothing
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, 5:] = False
    host = sequence_medians(mags, valid)
    ok = torch.isfinite(mags) & valid.unsqueeze(-1)
    assert torch.allclose(device_medians(mags, ok)[:2], host[:2]) and device_medians(mags, ok)[2].isnan()
    assert host[2].isnan()


@pytest.mark.slow  # three scans and a merge, each writing every output
def test_scan_corpus_shards_by_hand_merge_into_the_whole(saved, tmp_path, capsys):
    """`massact scan --corpus ... --shard i/n` for each half, then `massact merge`, equals the whole scan."""
    common = ["scan", str(saved), "--corpus", str(saved / "words.txt"), "--samples", "5", "--seq-len", "16"]
    common += ["--batch-size", "2", "--top-k", "4", "--json", "--dtype", "float32", "--device", "cpu"]
    assert run_cli([*common, "--out", str(tmp_path / "whole")], capsys)[0] in (0, None)
    for i in range(2):
        assert run_cli([*common, "--out", str(tmp_path / f"part{i}"), "--shard", f"{i}/2"], capsys)[0] in (0, None)
    assert CorpusSummary.load(tmp_path / "part0").num_sequences == 3
    parts = [str(tmp_path / "part0"), str(tmp_path / "part1")]
    code, _, _ = run_cli(["merge", *parts, "--out", str(tmp_path / "m")], capsys)
    assert code in (0, None)
    _assert_same(CorpusSummary.load(tmp_path / "m"), CorpusSummary.load(tmp_path / "whole"))
    assert json.loads((tmp_path / "whole" / "corpus.json").read_text())["prefix_tokens"] == ["<s>"]
    code, _, err = run_cli([*common, "--out", str(tmp_path / "bad"), "--shard", "0/9"], capsys)
    assert code == 2 and "more parts than" in err and not (tmp_path / "bad").exists()
