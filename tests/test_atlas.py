"""`massact atlas`: planted models of two families side by side, a failing model as a row, resume."""

from __future__ import annotations

import copy
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_runner import run, run_captured
from planting import MARK, VOCAB, plant_massive, tiny_model
from rich.console import Console
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from massact.atlas.config import AtlasConfig
from massact.atlas.headroom import FORMATS, headroom
from massact.atlas.result import COLUMNS, PIPED_WIDTH, TERMINAL_COLUMNS, AtlasResult, cells
from massact.data import load_windows

PROMPT = "Summer is warm. Winter is cold."
WORDS = ["is", "warm", ".", "Winter", "cold", "and", "the", "sun", "snow", "falls", "rises", ","]
TEXT = "Summer is warm. Winter is cold, and the snow falls. Summer sun rises. " * 30
PLANT = {"llama": (1, 11), "gpt2": (2, 20)}  # block, dim


def word_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """Whole words; 'Summer' is the planted token id; with `bos`, every text starts with <s> (as LLaMA's do)."""
    vocab = {"<s>": 0, "[UNK]": 1, "Summer": MARK} | {w: 10 + i for i, w in enumerate(WORDS)}
    assert max(vocab.values()) < VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>" if bos else None)


@pytest.fixture(scope="module")
def planted_dirs(tmp_path_factory) -> dict[str, Path]:
    """A planted LLaMA whose tokenizer adds a BOS and a planted GPT-2 without one, saved to folders."""
    dirs = {}
    for family, (block, dim) in PLANT.items():
        folder = tmp_path_factory.mktemp(f"planted-{family}")
        model = tiny_model(family)
        plant_massive(model, block=block, dim=dim)
        model.save_pretrained(folder)
        word_tokenizer(bos=family == "llama").save_pretrained(folder)
        dirs[family] = folder
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    dirs["corpus"] = corpus
    return dirs


def _atlas(dirs: dict[str, Path], out: Path, *models: str, extra: tuple[str, ...] = ()) -> list[str]:
    corpus = ["--corpus", str(dirs["corpus"]), "--samples", "2", "--seq-len", "16"]
    return ["atlas", *models, *corpus, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def atlas_run(planted_dirs, tmp_path_factory):
    """One atlas over the planted LLaMA, the planted GPT-2 and a path with no model, run once:
    (its command line, its --out, the missing path, (exit status, stdout, stderr))."""
    out = tmp_path_factory.mktemp("atlas") / "out"
    missing = str(out.parent / "no-such-model")
    argv = _atlas(planted_dirs, out, str(planted_dirs["llama"]), str(planted_dirs["gpt2"]), missing, extra=("--json",))
    return argv, out, missing, run_captured(argv)


def _row(data: dict, model: Path | str) -> dict:
    return next(r for r in data["models"] if r["model"] == str(model))


@torch.no_grad()
def reference(folder: Path) -> dict:
    """The saved model run by transformers itself on PROMPT (eager attention), its block outputs kept by plain
    hooks: per block the largest |x|, the lower median |x|, and the share of heads whose first-token importance
    (mean probability the queries give the first token) passes the sink threshold 0.3."""
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt")["input_ids"]
    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
    outputs: list[torch.Tensor] = []

    def keep(module, args, out):
        outputs.append((out[0] if isinstance(out, tuple) else out)[0].abs())

    handles = [block.register_forward_hook(keep) for block in blocks]
    try:
        attentions = model(input_ids=ids, output_attentions=True).attentions
    finally:
        for handle in handles:
            handle.remove()
    return {
        "peaks": [float(m.max()) for m in outputs],
        "medians": [float(m.flatten().median()) for m in outputs],
        "importance": [float(a[0, :, :, 0].double().mean()) for a in attentions],
        "sink_fraction": [float((a[0, :, :, 0].double().mean(-1) > 0.3).double().mean()) for a in attentions],
    }


@torch.no_grad()
def reference_perplexity(folder: Path, windows: torch.Tensor) -> float:
    """exp of the mean next-token cross-entropy over the windows, from transformers' logits."""
    logits = AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids=windows).logits
    return math.exp(float(F.cross_entropy(logits[:, :-1].flatten(0, 1).double(), windows[:, 1:].flatten())))


@pytest.mark.slow  # every analysis on two models
def test_atlas_two_families_and_a_failing_model(atlas_run, planted_dirs):
    argv, out, missing, (code, stdout, stderr) = atlas_run
    assert code in (0, None), stderr
    data = json.loads(stdout)
    assert data == json.loads((out / "atlas.json").read_text())
    assert [r["model"] for r in data["models"]] == [str(planted_dirs["llama"]), str(planted_dirs["gpt2"]), missing]
    for family, kind in (("llama", "other"), ("gpt2", "first")):  # LLaMA's tokenizer puts a BOS before the plant
        block, dim = PLANT[family]
        row = _row(data, planted_dirs[family])
        assert row["status"] == "ok" and row["reasons"] == {}, row.get("reasons")
        assert row["num_blocks"] == 4 and row["hidden_size"] == 32
        assert row["parameters"] == sum(p.numel() for p in tiny_model(family).parameters())
        massive = row["massive"]
        assert massive["dims"] == [dim] and massive["token_kinds"] == [kind] and massive["tokens"] == ["Summer"]
        assert (massive["first_block"], massive["last_block"]) == (block, 3)
        expected = reference(planted_dirs[family])
        peaks = expected["peaks"]
        assert abs(massive["peak_value"]) == pytest.approx(max(peaks[block:]), rel=1e-5)
        assert max(peaks[:block]) < 100 < min(peaks[block:])  # the plant, from its block on
        ratios = [p / m for p, m in zip(peaks, expected["medians"])]
        assert row["block_peak_ratio"] == pytest.approx(ratios, rel=1e-4)
        for name, limit in FORMATS.items():
            room = row["headroom"][name]
            assert room["peak_over_max"] == pytest.approx(max(peaks) / limit, rel=1e-5)
            assert room["first_overflow_block"] == next((i for i, p in enumerate(peaks) if p > limit), None)
        (weight,) = row["super_weights"]  # the planted unit 5 of the block's down-projection writes the jump
        assert weight["block"] == block and weight["coordinates"] == [dim, 5]
        assert weight["share_of_jump"] > 0.99
        sites = row["constancy"]["sites"]
        assert sites[0]["dim"] == dim and sites[0]["cv"] < 0.01 and sites[0]["frequency"] == 1.0
        assert sites[0]["sequences"] == 2
        over = next((f", overflows at block {i}" for i, p in enumerate(peaks) if p > 65504), "")
        assert f"peak is {max(peaks) / 65504:.3g}x the fp16 max{over} |" in (out / "atlas.md").read_text()
        sinks = expected["sink_fraction"]
        assert row["sink_heads"] == {
            "first_massive_block": block,
            "before": pytest.approx(sum(sinks[: block + 1]) / (block + 1), abs=1e-12),
            "after": pytest.approx(sum(sinks[block + 1 :]) / (len(sinks) - block - 1), abs=1e-12),
        }
        attention = json.loads((out / row["folder"] / "attention" / "attention.json").read_text())
        importance = [b["first_token_importance"] for b in attention["blocks"]]
        assert importance == pytest.approx(expected["importance"], abs=1e-5)
        tokenizer = AutoTokenizer.from_pretrained(planted_dirs[family])
        windows = load_windows(tokenizer, str(planted_dirs["corpus"]), 4, 16, seed=0)[:2]  # the draw quant scores
        quant = row["w8a8"]
        perplexity = reference_perplexity(planted_dirs[family], windows)
        assert quant["baseline_perplexity"] == pytest.approx(perplexity, rel=1e-5)
        # a random model predicts nearly uniformly over its 64 tokens, so 8-bit rounding barely moves it
        assert abs(quant["ratio"] - 1) < 0.02 and abs(quant["ratio_outlier_tokens_kept"] - 1) < 0.02
        for step in ("scan", "corpus", "trace", "attention", "quant"):
            assert (out / row["folder"] / step / "report.html").is_file()
    failed = data["models"][2]
    assert failed["status"] == "failed" and "no such file" in failed["reason"]
    assert not (out / "no-such-model").exists()
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "atlas.md").read_text()
    assert table.count(f"| {planted_dirs['gpt2']} | GPT2LMHeadModel | 4 | 32 |") == 1
    assert f"| {missing} | failed: " in table
    for step in ("scan", "corpus", "trace", "attention", "quant"):
        assert f"{planted_dirs['llama']}: {step} ..." in stderr  # progress per model and step


@pytest.mark.slow  # every analysis on two models
def _run_facts_aside(data: object) -> object:
    """`data` without any `execution` entry: how a run executed and its peak memory, which differ from run to run."""
    if isinstance(data, dict):
        return {key: _run_facts_aside(value) for key, value in data.items() if key != "execution"}
    if isinstance(data, list):
        return [_run_facts_aside(value) for value in data]
    return data


def test_rerun_resumes_finished_models(atlas_run, planted_dirs, capsys):
    argv, out, missing, _ = atlas_run
    first = json.loads((out / "atlas.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/row.json")}
    assert len(stamps) == 2
    code, stdout, stderr = run(argv, capsys)
    assert code in (0, None)
    assert stderr.count("finished earlier") == 2 and ": scan ..." not in stderr
    assert f"[3/3] loading {missing}" in stderr  # a model that failed is tried again
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/row.json")} == stamps
    assert _run_facts_aside(json.loads(stdout)) == _run_facts_aside(first)
    code, _, stderr = run([*argv, "--steps", "scan"], capsys)  # other settings: the models are redone
    assert code in (0, None) and "finished earlier" not in stderr and f"{planted_dirs['gpt2']}: scan ..." in stderr


def test_no_model_analysed_is_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run(["atlas", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)], capsys)
    *progress, error = stderr.strip().splitlines()
    assert code == 2 and error.startswith("massact: error: no model could be analysed")
    assert all(line.startswith("[") for line in progress) and not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(("--samples", "0"), "--samples 0"), (("--seq-len", "1"), "--seq-len 1"), (("--steps", "scan,x"), "--steps x")],
)
def test_bad_options_fail_before_any_model_is_loaded(planted_dirs, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, _, stderr = run(["atlas", str(planted_dirs["llama"]), "--out", str(out), *extra], capsys)
    assert code == 2 and message in stderr and "loading" not in stderr and not out.exists()


def test_headroom_per_format():
    room = headroom([1.0, 70000.0, 500.0, None], nonfinite_blocks=[])
    assert room["fp16"] == {"max_finite": 65504.0, "peak_over_max": 70000.0 / 65504.0, "first_overflow_block": 1}
    assert room["fp8_e4m3"]["first_overflow_block"] == 1 and room["bf16"]["first_overflow_block"] is None
    assert headroom([1.0, None], nonfinite_blocks=[1])["bf16"]["first_overflow_block"] == 1


def test_planted_tokenizers_put_the_plant_where_the_test_expects():
    assert word_tokenizer(bos=True)(PROMPT)["input_ids"][:2] == [0, MARK]
    assert word_tokenizer(bos=False)(PROMPT)["input_ids"][0] == MARK
    assert 1 not in word_tokenizer(bos=False)(TEXT)["input_ids"]  # every corpus word is known


def test_peak_over_max_reads_as_a_multiple_of_the_format_max():
    row = {"model": "m", "status": "ok", "headroom": headroom([1.0, 103794.9, 500.0], nonfinite_blocks=[])}
    shown = dict(zip(COLUMNS, cells(row)))
    assert shown["fp16 peak / max"] == "peak is 1.58x the fp16 max, overflows at block 1"  # 103,794.9 / 65,504
    assert shown["fp8 E4M3 peak / max"] == "peak is 232x the fp8 e4m3 max, overflows at block 1"  # 103,794.9 / 448
    assert (
        shown["bf16 peak / max"].startswith("peak is 3.06e-34x the bf16 max")
        and "overflows" not in shown["bf16 peak / max"]
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_corpus_cv_of_a_site_seen_in_one_window_is_not_applicable(family, planted_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _atlas(planted_dirs, out, str(planted_dirs[family]), extra=("--steps", "scan,corpus", "--json"))
    argv[argv.index("--samples") + 1] = "1"
    code, stdout, stderr = run(argv, capsys)
    assert code in (0, None), stderr
    (site, *_) = json.loads(stdout)["models"][0]["constancy"]["sites"]
    assert site["dim"] == PLANT[family][1] and site["sequences"] == 1 and site["cv"] is None
    assert "| n/a (1 of 1 windows) |" in (out / "atlas.md").read_text()


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but the run markers (they name the command line), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".massact-run.json"
    }


@pytest.mark.slow  # three atlas runs, two of them writing every output
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_result_writes_the_same_folders_from_memory_and_from_its_cache(family, planted_dirs, tmp_path):
    import massact.atlas
    from massact.atlas import AtlasConfig

    config = AtlasConfig(corpus=str(planted_dirs["corpus"]), samples=2, seq_len=16, steps=("scan", "corpus"))
    model = str(planted_dirs[family])
    in_memory = massact.atlas.run([model], None, config)
    assert not list(tmp_path.iterdir())  # without a cache, running writes nothing
    in_memory.write(tmp_path / "a")
    cache = tmp_path / "cache"
    massact.atlas.run([model], cache, config)  # analysed, kept in the cache
    reused = massact.atlas.run([model], cache, config)  # read back from the cache
    assert reused.runs[0].cached == cache / reused.runs[0].slug and not reused.runs[0].outputs
    reused.write(tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    slug = reused.runs[0].slug
    json_files = {name for name in a if name.endswith(".json")}
    assert {f"{slug}/row.json", f"{slug}/scan/scan.json", f"{slug}/corpus/corpus.json"} <= json_files
    assert a.keys() == b.keys()
    for name in json_files:
        assert _run_facts_aside(json.loads(a[name])) == _run_facts_aside(json.loads(b[name])), name
    assert _run_facts_aside(json.loads(a["atlas.json"])["models"]) == _run_facts_aside([reused.rows[0]])
    assert _run_facts_aside(reused.rows[0]) == _run_facts_aside(in_memory.rows[0])
    block, dim = PLANT[family]
    assert reused.rows[0]["massive"]["dims"] == [dim] and reused.rows[0]["massive"]["first_block"] == block


NUMBER = re.compile(r"\d[\d,.]*\d|\d")


def _assert_numbers_whole(result: AtlasResult, printed: str, width: int) -> None:
    """Every number of every column shown is printed whole, the table fits in `width`, left-out columns named."""
    table = [line for line in printed.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and max(len(line) for line in table) <= width
    printed_numbers = set(NUMBER.findall(printed))
    shown = [name for name in TERMINAL_COLUMNS if name not in result.left_out(width)]
    assert {"model", "massive dims", "peak value"} <= set(shown)
    for row in result.rows:
        text = dict(zip(COLUMNS, cells(row)))
        for name in shown:
            for number in NUMBER.findall(text[name]) if name != "model" else []:
                assert number in printed_numbers, (name, number, printed)
    note = " ".join(printed.split())
    for name in result.left_out(width):
        assert name in note.split("left out to fit")[1]


def _wide(row: dict) -> dict:
    """The row with numbers as long as a large model's: more digits in every count, dim and peak."""
    row = copy.deepcopy(row)
    row["model"] = row["model"] + "-with-a-long-quantized-name-Q4_K_M.gguf"
    row["hidden_size"] *= 1000
    row["num_blocks"] *= 16
    massive = row["massive"]
    massive["dims"] = [d * 49 + 1 for d in massive["dims"]] + [row["hidden_size"] - 1]
    massive["peak_value"] *= 1000
    massive["peak_ratio"] *= 1000
    return row


@pytest.mark.parametrize("width", [80, 120])
def test_terminal_table_never_cuts_a_number(planted_dirs, tmp_path, capsys, width):
    out = tmp_path / "out"
    models = (str(planted_dirs["llama"]), str(planted_dirs["gpt2"]))
    code, stdout, stderr = run(_atlas(planted_dirs, out, *models, extra=("--steps", "scan,corpus")), capsys)
    assert code in (0, None), stderr
    rows = json.loads((out / "atlas.json").read_text())["models"]
    piped = AtlasResult(rows, AtlasConfig())
    _assert_numbers_whole(piped, stdout, PIPED_WIDTH)  # stdout is not a terminal: no column is narrowed
    assert piped.left_out(PIPED_WIDTH) == [] and "left out" not in stdout
    for result in (piped, AtlasResult(rows + [_wide(r) for r in rows], AtlasConfig())):
        console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
        result.show(console)
        _assert_numbers_whole(result, console.file.getvalue(), width)
    assert AtlasResult([_wide(rows[0])], AtlasConfig()).left_out(80)  # too wide for 80 columns: some left out
