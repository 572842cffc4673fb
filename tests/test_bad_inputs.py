"""Every command, fed the mistakes people make: exit 2, at most 3 lines on stderr, no traceback, nothing written.

The table below is the one place where commands meet their bad inputs: a new command joins it with
its rows in ROWS (and `test_every_command_is_in_the_table` fails until it does). Model-dependent rows
run on two tiny families: a LLaMA whose tokenizer adds a BOS and a GPT-2 whose tokenizer adds none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_runner import run
from planting import VOCAB, tiny_model

from massact.cli import build_command

FAMILIES = ("llama", "gpt2")
_WORD_TEXT = (
    ". , ; : ! ? ' the and of to a in that is it you he was for on are with as his they be at one have this "
    "from or had by not word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them"
)
WORDS = tuple(_WORD_TEXT.split())


def word_tokenizer(adds_bos: bool):
    """A word tokenizer of VOCAB ids (other words are <unk>); with `adds_bos`, a plain text starts with <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS[: VOCAB - 3])}}
    assert len(vocab) == VOCAB
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny models by family, plus a second LLaMA of another shape ('other')."""
    import transformers as tf

    root = tmp_path_factory.mktemp("bad-input-models")
    saved = {}
    for family in FAMILIES:
        path = root / family
        tiny_model(family).save_pretrained(path)
        word_tokenizer(adds_bos=family == "llama").save_pretrained(path)
        saved[family] = path
    other = tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    other.save_pretrained(root / "other")
    word_tokenizer(adds_bos=True).save_pretrained(root / "other")
    saved["other"] = root / "other"
    return saved


@dataclass
class Place:
    """The files a row may point at, made fresh in each test's folder."""

    root: Path
    model: str  # the family's model directory
    other_model: str

    @property
    def out(self) -> str:
        return str(self.root / "out")

    def file(self, name: str, data: bytes | str) -> str:
        path = self.root / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)

    def folder(self, name: str, files: dict[str, str] | None = None) -> str:
        path = self.root / "inputs" / name
        path.mkdir(parents=True, exist_ok=True)
        for file_name, text in (files or {}).items():
            (path / file_name).write_text(text)
        return str(path)

    @property
    def small_corpus(self) -> str:
        """A few thousand words: enough windows for every row, quick to tokenize."""
        return self.file("small.txt", " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(3000)))

    @property
    def empty_file(self) -> str:
        return self.file("empty.txt", "")

    @property
    def binary_file(self) -> str:
        return self.file("binary.txt", bytes(range(256)) * 4)

    @property
    def under_a_file(self) -> str:
        return str(Path(self.file("a_file", "x")) / "sub")

    @property
    def fake_checkpoint(self) -> str:
        """A folder that looks like a `massact train` checkpoint but holds no readable model."""
        return self.folder(
            "checkpoint",
            {"config.json": json.dumps({"model_type": "massact-gpt2"}), "state.json": "{}", "model.safetensors": "x"},
        )

    @property
    def post_norm_model(self) -> str:
        """A tiny OPT that normalises the residual stream after each block (post-norm): not scale-invariant."""
        import transformers as tf

        path = self.root / "inputs" / "post_norm"
        config = tf.OPTConfig(
            vocab_size=VOCAB, hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
            word_embed_proj_dim=16, max_position_embeddings=64, do_layer_norm_before=False,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )  # fmt: skip
        tf.OPTForCausalLM(config).save_pretrained(path)
        word_tokenizer(adds_bos=True).save_pretrained(path)
        return str(path)

    def foreign_means(self) -> str:
        """A means.json as a corpus scan of the *other* model writes it (another hidden size)."""
        return self.file(
            "means.json",
            json.dumps({"model": self.other_model, "hidden_size": 16, "num_blocks": 2, "sites": []}),
        )


# (command words, row name) -> (argv after the command words, text the one-line error must contain,
# whether the row runs on every family). Each argv is a lambda of Place, so files are made inside the
# test's own folder; the out path is added when a row has none.
ROWS: dict[tuple[str, str], object] = {}

# Options every row of a command gets before its own (which win when repeated): small, valid settings
# so that a row fails for its own mistake only, and fast if a check were missing.
BASE = {
    "intervene": lambda p: ["--corpus", p.small_corpus, "--seq-len", "16", "--samples", "2"],
    "trace": lambda p: ["--corpus", p.small_corpus, "--seq-len", "16", "--samples", "2"],
    "export": lambda p: ["--format", "all", "--corpus", p.small_corpus, "--seq-len", "16", "--samples", "2"],
    "vit fix-reg-mean": lambda p: ["--images", "samples"],
    "rewrite": lambda p: ["--rescale", "auto", "--corpus", p.small_corpus, "--seq-len", "16", "--samples", "2"],
    "train gpt2": lambda p: ["--max-steps", "1"],
    "train llama": lambda p: ["--max-steps", "1", "--preset", "backcopy-test"],
    "experiment attention-bias": lambda p: ["--max-steps", "1"],
    "experiment attention-variants": lambda p: ["--preset", "backcopy-test", "--variants", "default", "--seeds", "1"],
}


# Rows whose mistake is visible without the model: they must be refused before any model is loaded.
BEFORE_LOADING = ("out ", "device ", "dtype", "option", " 0", "unknown corpus", "corpus file", "text file")


def row(command: str, name: str, expect: str, model_dependent: bool = False):
    def add(argv):
        ROWS[(command, name)] = (argv, expect, model_dependent)
        return argv

    return add


def _refuse_loading(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was refused")


def _common_model_rows(command: str, out_flag: bool = True, every_source: bool = False) -> None:
    """The mistakes any model command can get: the model, the device, the out folder.

    Every command loads through the same loader, so the rarer model mistakes run on one command
    (`every_source`) and the others check only that a missing model is refused.
    """
    row(command, "missing model", "no such file")(lambda p: [str(p.root / "nope")])
    if every_source:
        row(command, "mistyped default offline", "did you mean `default`")(lambda p: ["defualt"])
        row(command, "model folder without a model", "config.json")(lambda p: [p.folder("empty_dir")])
        row(command, "checkpoint that is not one", "checkpoint")(lambda p: [p.fake_checkpoint])
    row(command, "device cuda without cuda", "cuda")(lambda p: [p.model, "--device", "cuda"])
    row(command, "device tpu", "tpu")(lambda p: [p.model, "--device", "tpu"])
    row(command, "unknown dtype", "dtype")(lambda p: [p.model, "--dtype", "int3"])
    row(command, "wrong option name", "--no-such-option")(lambda p: [p.model, "--no-such-option"])
    if out_flag:
        row(command, "out under a file", "--out")(lambda p: [p.model, "--out", p.under_a_file])
        row(command, "out in /proc", "--out")(lambda p: [p.model, "--out", "/proc/massact-out/sub"])


def _corpus_rows(command: str, extra: tuple[str, ...] = ()) -> None:
    row(command, "unknown corpus", "nosuchcorpus")(lambda p: [p.model, *extra, "--corpus", "nosuchcorpus"])
    row(command, "empty corpus file", "empty")(lambda p: [p.model, *extra, "--corpus", p.empty_file])
    row(command, "binary corpus file", "binary.txt")(lambda p: [p.model, *extra, "--corpus", p.binary_file])
    row(command, "samples 0", "--samples")(lambda p: [p.model, *extra, "--samples", "0"])
    row(command, "batch size 0", "--batch-size")(lambda p: [p.model, *extra, "--batch-size", "0"])


def _prompt_rows(command: str) -> None:
    row(command, "empty text file", "empty")(lambda p: [p.model, "--text-file", p.empty_file])
    row(command, "binary text file", "--text-file")(lambda p: [p.model, "--text-file", p.binary_file])
    row(command, "text file is a directory", "a directory, not a file")(
        lambda p: [p.model, "--text-file", p.folder("a_folder")]
    )


# scan
_common_model_rows("scan", every_source=True)
_corpus_rows("scan", ("--corpus", "shakespeare", "--seq-len", "16"))
_prompt_rows("scan")
row("scan", "top-k 0", "--top-k")(lambda p: [p.model, "--top-k", "0"])
row("scan", "num-images 0", "--num-images")(lambda p: [p.model, "--images", "samples", "--num-images", "0"])
row("scan", "keep past the last block", "--keep", True)(lambda p: [p.model, "--keep", "99"])
row("scan", "unknown image folder", "nosuchimages")(lambda p: [p.model, "--images", str(p.root / "nosuchimages")])

# merge
row("merge", "run path that does not exist", "typo_dir")(
    lambda p: [str(Path(p.folder("corpA")) / "typo_dir"), str(Path(p.folder("corpB")) / "typo_dir"), "--out", p.out]
)
row("merge", "folder that holds no run", "summary")(
    lambda p: [p.folder("not_a_run"), p.folder("not_a_run2"), "--out", p.out]
)
row("merge", "out under a file", "--out")(lambda p: [p.folder("runA"), p.folder("runB"), "--out", p.under_a_file])

# intervene
_common_model_rows("intervene")
_corpus_rows("intervene", ("--seq-len", "16"))
row("intervene", "dims past the hidden size", "--dims", True)(lambda p: [p.model, "--dims", "99999"])
row("intervene", "dims not numbers", "--dims")(lambda p: [p.model, "--dims", "a,b"])
row("intervene", "tokens past the window", "--tokens", True)(lambda p: [p.model, "--seq-len", "16", "--tokens", "500"])
row("intervene", "tokens not numbers", "--tokens")(lambda p: [p.model, "--tokens", "x"])
row("intervene", "block past the last", "--block", True)(lambda p: [p.model, "--block", "99"])
row("intervene", "bad block range", "--block")(lambda p: [p.model, "--block", "3-1-"])
row("intervene", "unknown mode", "--modes")(lambda p: [p.model, "--modes", "nosuch"])
row("intervene", "means of another model", "means", True)(lambda p: [p.model, "--means", p.foreign_means()])
row("intervene", "means folder without means.json", "without means.json")(
    lambda p: [p.model, "--means", p.folder("not_a_scan")]
)

# attention
_common_model_rows("attention")
_corpus_rows("attention", ("--seq-len", "16"))
_prompt_rows("attention")
row("attention", "block past the last", "--block", True)(lambda p: [p.model, "--block", "99"])
row("attention", "tokens not numbers", "--tokens")(lambda p: [p.model, "--tokens", "x"])
row("attention", "tokens past the prompt", "--tokens", True)(lambda p: [p.model, "--tokens", "500"])

# trace
_common_model_rows("trace")
_corpus_rows("trace", ("--seq-len", "16"))
_prompt_rows("trace")
row("trace", "block past the last", "--block", True)(lambda p: [p.model, "--block", "99"])
row("trace", "dim past the hidden size", "--dim", True)(lambda p: [p.model, "--dim", "99999"])
row("trace", "token past the prompt", "--token", True)(lambda p: [p.model, "--token", "500", "--dim", "1"])

# export
_common_model_rows("export")
_corpus_rows("export", ("--seq-len", "16"))
row("export", "unknown format", "--format")(lambda p: [p.model, "--format", "nosuch"])

# vit
_common_model_rows("vit fix-reg-mean")
row("vit fix-reg-mean", "unknown image folder", "nosuchimages")(
    lambda p: [p.model, "--images", str(p.root / "nosuchimages")]
)
row("vit fix-reg-mean", "unknown eval folder", "--eval")(lambda p: [p.model, "--eval", str(p.root / "nosuch")])
row("vit fix-reg-mean", "batch size 0", "--batch-size")(lambda p: [p.model, "--batch-size", "0"])
row("vit fix-reg-mean", "samples 0", "--samples")(lambda p: [p.model, "--samples", "0"])
row("vit fix-reg-mean", "a text model", "vision", True)(lambda p: [p.model])
# `vit samples` takes its folder as the argument OUT: errors must name OUT, not an option it lacks
row("vit samples", "out is a file", "OUT")(lambda p: [p.file("a_file", "x")])
row("vit samples", "out under a file", "OUT")(lambda p: [p.under_a_file])
row("vit samples", "crops 1", "--crops")(lambda p: [p.out, "--crops", "1"])

# train and experiment (they make their own models: no MODEL argument)
for _cmd in ("train gpt2", "train llama", "experiment attention-bias"):
    row(_cmd, "out under a file", "--out")(lambda p: ["--out", p.under_a_file])
    row(_cmd, "out in /proc", "--out")(lambda p: ["--out", "/proc/massact-out/sub"])
    row(_cmd, "device cuda without cuda", "cuda")(lambda p: ["--out", p.out, "--device", "cuda"])
    row(_cmd, "device tpu", "tpu")(lambda p: ["--out", p.out, "--device", "tpu"])
    row(_cmd, "unknown preset", "preset")(lambda p: ["--out", p.out, "--preset", "nosuch"])
    row(_cmd, "max steps 0", "--max-steps")(lambda p: ["--out", p.out, "--max-steps", "0"])
    text = ["--preset", "cpu-small"] if _cmd == "train llama" else []  # its default preset reads no corpus
    row(_cmd, "unknown corpus", "nosuchcorpus")(lambda p, t=text: ["--out", p.out, *t, "--corpus", "nosuchcorpus"])
    row(_cmd, "empty corpus file", "empty")(lambda p, t=text: ["--out", p.out, *t, "--corpus", p.empty_file])
_av = "experiment attention-variants"
row(_av, "out under a file", "--out")(lambda p: ["--out", p.under_a_file])
row(_av, "out in /proc", "--out")(lambda p: ["--out", "/proc/massact-out/sub"])
row(_av, "device cuda without cuda", "cuda")(lambda p: ["--out", p.out, "--device", "cuda"])
row(_av, "device tpu", "tpu")(lambda p: ["--out", p.out, "--device", "tpu"])
row(_av, "unknown preset", "preset")(lambda p: ["--out", p.out, "--preset", "nosuch"])
row(_av, "preset of another task", "does not fit --task")(lambda p: ["--out", p.out, "--preset", "cpu-small"])
row(_av, "max steps 0", "--max-steps")(lambda p: ["--out", p.out, "--max-steps", "0"])
row(_av, "seeds 0", "--seeds")(lambda p: ["--out", p.out, "--seeds", "0"])
row(_av, "unknown variant", "attention variant")(lambda p: ["--out", p.out, "--variants", "default,nosuch"])
row(_av, "no variant", "--variants")(lambda p: ["--out", p.out, "--variants", ","])
row(_av, "variant twice", "twice")(lambda p: ["--out", p.out, "--variants", "sink,sink-token"])
row(_av, "unknown optimizer", "optimizer")(lambda p: ["--out", p.out, "--optimizer", "sgd"])
row(_av, "unknown corpus", "nosuchcorpus")(
    lambda p: ["--out", p.out, "--preset", "cpu-small", "--task", "nosuchcorpus"]
)
row(_av, "empty corpus file", "empty")(lambda p: ["--out", p.out, "--preset", "cpu-small", "--task", p.empty_file])
row("train gpt2", "resume without a checkpoint", "checkpoint")(lambda p: ["--out", p.out, "--resume"])
row("train gpt2", "unknown optimizer", "optimizer")(lambda p: ["--out", p.out, "--optimizer", "sgd"])
row("train gpt2", "unknown attention", "attention")(lambda p: ["--out", p.out, "--attention", "nosuch"])
row("train llama", "unknown attention", "attention")(lambda p: ["--out", p.out, "--attention", "nosuch"])
row(_av, "unknown arch", "--arch")(lambda p: ["--out", p.out, "--arch", "nosuch"])

# rewrite
_common_model_rows("rewrite")
_corpus_rows("rewrite", ("--seq-len", "16"))
row("rewrite", "no rewrite option", "give a rewrite")(lambda p: [p.model, "--rescale", "none"])
row("rewrite", "smooth with rotate option", "--rotate")(lambda p: [p.model, "--smooth", "0.5", "--rotate"])
row("rewrite", "rescale option not a factor", "--rescale")(lambda p: [p.model, "--rescale", "big"])
row("rewrite", "rescale 0", "--rescale")(lambda p: [p.model, "--rescale", "0"])
row("rewrite", "unknown check-quant option", "--check-quant")(lambda p: [p.model, "--check-quant", "w2a2"])
row("rewrite", "dtype float16", "--dtype")(lambda p: [p.model, "--dtype", "float16"])
row("rewrite", "out holds another model", "holds another model")(lambda p: [p.model, "--out", p.model])
row("rewrite", "post-norm model, not scale-invariant", "post-norm")(lambda p: [p.post_norm_model])

# commands that are newer than this table get the rows every model command must pass
for _cmd in ("quant", "stream", "atlas"):
    if (Path(__file__).parents[1] / "src" / "massact" / "commands" / f"{_cmd}.py").exists():
        _common_model_rows(_cmd)


def _command_paths(command, prefix: str = "") -> list[str]:
    subs = getattr(command, "commands", None)
    if not subs:
        return [prefix]
    return [p for name, sub in subs.items() for p in _command_paths(sub, f"{prefix} {name}".strip())]


def _cases() -> list:
    cases = []
    for (command, name), (_, _, model_dependent) in ROWS.items():
        for family in FAMILIES if model_dependent else FAMILIES[:1]:
            cases.append(pytest.param(command, name, family, id=f"{command}: {name} [{family}]"))
    return cases


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("command", "name", "family"), _cases())
def test_bad_input_is_one_line_exit_2_and_nothing_written(command, name, family, models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASSACT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "80")  # errors must stay one line even in a narrow terminal
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    place = Place(root=work, model=str(models[family]), other_model=str(models["other"]))
    make_argv, expect, _ = ROWS[(command, name)]
    own = make_argv(place)
    model_first = bool(own) and not own[0].startswith("-") and command != "vit samples" and command != "merge"
    base = BASE[command](place) if command in BASE else []
    argv = [*command.split(), *(own[:1] if model_first else []), *base, *(own[1:] if model_first else own)]
    if "--out" not in argv and command not in ("vit samples",):
        argv += ["--out", place.out]
    if any(key in f"{name} " for key in BEFORE_LOADING):
        monkeypatch.setattr("transformers.AutoConfig.from_pretrained", _refuse_loading)
    before = _snapshot(work)
    code, stdout, stderr = run(argv, capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit {code}; stderr: {stderr[-2000:]}"
    assert "Traceback" not in stderr
    assert 1 <= len(lines) <= 3, stderr
    assert lines[-1].startswith("massact: error: "), stderr
    assert (expect in stderr) if expect.isupper() else (expect.lower() in stderr.lower()), stderr
    assert stdout == ""
    assert _snapshot(work) == before, "something was written"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))
    if name == "missing model":  # refused before any work: no corpus fetched, nothing cached
        assert not (tmp_path / "cache").exists()


def test_every_command_is_in_the_table():
    commands = set(_command_paths(build_command()))
    covered = {command for command, _ in ROWS}
    assert commands <= covered, f"commands without bad-input rows: {sorted(commands - covered)}"


def test_usage_errors_are_one_line_naming_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    for argv, option in (
        (["scan", "--top-k", "0"], "--top-k"),
        (["scan", "--abs-threshold", "abc"], "--abs-threshold"),
        (["intervene", "--samples", "0"], "--samples"),
        (["scan", "--nosuch"], "--nosuch"),
        (["nosuchcommand"], "nosuchcommand"),
    ):
        code, stdout, stderr = run(argv, capsys)
        assert code == 2 and stdout == ""
        assert stderr.count("\n") == 1 and stderr.startswith("massact: error: "), stderr
        assert option in stderr and "─" not in stderr


def test_help_shows_no_bool_metavar(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    for argv in (["scan", "--help"], ["train", "gpt2", "--help"], ["vit", "fix-reg-mean", "--help"]):
        code, stdout, _ = run(argv, capsys)
        assert code == 0
        assert "--json" in stdout and "<bool>" not in stdout
        assert "<int" in stdout  # options that take a value still show their type
