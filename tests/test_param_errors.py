"""Library errors name the Python parameter the caller wrote; the command line names its flag instead.

Each row raises one validation error twice: through the library (a config, `load_model`, an output folder),
where the message must name the parameter (`` `samples=0` ``) and no flag, and through `massact`, where the
same check must name the flag (`--samples 0`) and no parameter. The translation is `massact.commands.flags`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest
from cli_runner import run

from massact.commands.flags import flags_of, to_flags
from massact.errors import MassactError

SRC = Path(__file__).resolve().parents[1] / "src" / "massact"


def _scan_keep():
    from massact.scan import ScanConfig

    ScanConfig(keep=-1)


def _corpus_samples():
    from massact.corpus import CorpusConfig

    CorpusConfig(samples=0)


def _corpus_shard():
    from massact.corpus.config import parse_shard

    parse_shard("2/2")


def _attention_threshold():
    from massact.attention import AttentionConfig

    AttentionConfig(threshold=1.5)


def _trace_share():
    from massact.trace import TraceConfig

    TraceConfig(share=0.0)


def _intervene_means_samples():
    from massact.interventions import InterventionConfig

    InterventionConfig(means_samples=0)


def _intervene_modes():
    from massact.interventions import InterventionConfig

    InterventionConfig(modes=("nosuch",))


def _stream_stride():
    from massact.stream import StreamConfig

    StreamConfig(stride=0)


def _atlas_steps():
    from massact.atlas import AtlasConfig

    AtlasConfig(steps=("nosuch",))


def _image_scan_batch_size():
    from massact.vision import ImageScanConfig

    ImageScanConfig(batch_size=0)


def _fix_reg_mean_batch_size():
    from massact.vision import FixRegMeanConfig

    FixRegMeanConfig(batch_size=0)


def _experiment_seeds():
    from massact.train.experiment import ExperimentConfig

    ExperimentConfig(seeds=0)


def _train_batch_size():
    from massact.train.presets import get_preset

    replace(get_preset("backcopy-test"), batch_size=0)


def _task_limit():
    from massact.tasks import TaskConfig

    TaskConfig(("arc_easy",), limit=0)


def _load_offload(tmp_path):
    from massact import load_model

    load_model(str(tmp_path / "model"), offload="sideways")


def _load_device(tmp_path):
    from massact import load_model

    load_model(str(tmp_path / "model"), device="tpu")


def _load_max_memory(tmp_path):
    from massact import load_model

    load_model(str(tmp_path / "model"), max_memory="lots")


def _out_is_a_file(tmp_path):
    from massact.outputs import check_output_dir

    check_output_dir(tmp_path / "a_file")


def _corpus_empty_file(tmp_path):
    from massact.data.corpus import load_texts

    load_texts(str(tmp_path / "empty.txt"))


def _perplexity_batch_size():
    import torch

    from massact.perplexity import evaluate_perplexity

    evaluate_perplexity(torch.nn.Identity(), torch.zeros(1, 4, dtype=torch.long), batch_size=0)


def _quant_alpha():
    from massact.quant import QuantConfig

    QuantConfig(alpha=1.5)


def _quant_schemes():
    from massact.quant import QuantConfig

    QuantConfig(schemes=())


def _quant_super_weights():
    from massact.quant import QuantConfig

    QuantConfig(super_weights=0)


def _quant_seq_len():
    from massact.quant import load_inputs

    load_inputs(None, "shakespeare", samples=2, seq_len=1, calib_samples=1)  # refused before the model is read


def _quant_calib_samples():
    from massact.quant import check_counts

    check_counts(samples=2, seq_len=16, calib_samples=0)


def _rewrite_nothing():
    from massact.rewrite.config import RewriteConfig

    RewriteConfig()


def _rewrite_rescale():
    from massact.rewrite.config import RewriteConfig

    RewriteConfig(rescale="lots")


def _rewrite_smooth():
    from massact.rewrite.config import RewriteConfig

    RewriteConfig(smooth=1.5)


def _rewrite_smooth_and_rotate():
    from massact.rewrite.config import RewriteConfig

    RewriteConfig(smooth=0.5, rotate=True)


def _rewrite_headroom():
    from massact.rewrite.config import RewriteConfig

    RewriteConfig(rescale="auto", headroom=2.0)


def _rewrite_check_quant():
    from massact.rewrite.config import RewriteConfig

    RewriteConfig(rotate=True, check_quant="w4")


def _rewrite_batch_size():
    from massact.rewrite.config import RewriteConfig

    RewriteConfig(rotate=True, batch_size=0)


def _rewrite_foreign_out(tmp_path):
    from massact.rewrite.folder import check_model_folder

    check_model_folder(tmp_path / "foreign")


def _export_format():
    from massact.export import ExportConfig

    ExportConfig(formats=("nosuch",))


def _export_no_format():
    from massact.export import ExportConfig

    ExportConfig(formats=(",",))


def _export_seq_len():
    from massact.export import ExportConfig

    ExportConfig(seq_len=0)


def _intervene_tasks_blockwise():
    from types import SimpleNamespace

    from massact.interventions.run import check

    check(SimpleNamespace(offload="blocks"), SimpleNamespace(tasks=object()), [])


# id -> (library call, what its message must hold, argv of the same mistake on the command line, what stderr must
# hold). MODEL is an empty folder: every row must be refused before a model is read.
ROWS = {
    "scan keep": (_scan_keep, "`keep=-1`: give a block index", ["scan", "MODEL", "--keep", "-1"], "--keep -1: give"),
    "corpus samples": (
        _corpus_samples,
        "`samples=0`: must be at least 1",
        ["scan", "MODEL", "--corpus", "shakespeare", "--samples", "0"],
        "--samples 0: must be at least 1",
    ),
    "corpus shard": (
        _corpus_shard,
        "`shard='2/2'`: needs 0 <= i < n",
        ["scan", "MODEL", "--corpus", "shakespeare", "--shard", "2/2"],
        "--shard 2/2: needs 0 <= i < n",
    ),
    "attention threshold": (
        _attention_threshold,
        "`threshold=1.5`: the sink threshold",
        ["attention", "MODEL", "--threshold", "1.5"],
        "--threshold 1.5: the sink threshold",
    ),
    "trace share": (
        _trace_share,
        "`share=0.0`: must be in (0, 1]",
        ["trace", "MODEL", "--share", "0"],
        "--share 0.0: must be in (0, 1]",
    ),
    "intervene means samples": (
        _intervene_means_samples,
        "`means_samples=0`: must be at least 1",
        ["intervene", "MODEL", "--means-samples", "0"],
        "--means-samples 0: must be at least 1",
    ),
    "intervene modes": (
        _intervene_modes,
        "`modes='nosuch'`: unknown mode nosuch",
        ["intervene", "MODEL", "--modes", "nosuch"],
        "--modes nosuch: unknown mode nosuch",
    ),
    "stream stride": (
        _stream_stride,
        "`stride=0`: must be between 1 and `cache=128`",
        ["stream", "MODEL", "--stride", "0"],
        "--stride 0: must be between 1 and --cache 128",
    ),
    "atlas steps": (
        _atlas_steps,
        "`steps='nosuch'`: unknown; choose from",
        ["atlas", "MODEL", "--steps", "nosuch"],
        "--steps nosuch: unknown; choose from",
    ),
    "image scan batch size": (
        _image_scan_batch_size,
        "`batch_size=0`: must be at least 1",
        ["scan", "MODEL", "--images", "IMAGES", "--batch-size", "0"],
        "--batch-size 0: must be at least 1",
    ),
    "fix-reg-mean batch size": (
        _fix_reg_mean_batch_size,
        "`batch_size=0`: must be at least 1",
        ["vit", "fix-reg-mean", "MODEL", "--images", "IMAGES", "--batch-size", "0"],
        "invalid value for '--batch-size'",  # the option's own bound (min=1) refuses it first
    ),
    "experiment seeds": (
        _experiment_seeds,
        "`seeds=0`: must be at least 1",
        ["experiment", "attention-variants", "--seeds", "0", "--out", "OUT_DIR"],
        "--seeds 0: must be at least 1",
    ),
    "train batch size": (_train_batch_size, "`batch_size=0`: must be at least 1", None, None),  # no such flag
    "task limit": (
        _task_limit,
        "`limit=0`: give at least 1 item per task",
        ["intervene", "MODEL", "--tasks", "TASKS", "--tasks-limit", "0"],
        "--tasks-limit 0: give at least 1 item per task",
    ),
    "load offload": (
        _load_offload,
        "`offload='sideways'`: give one of none, blocks, auto",
        ["scan", "MODEL", "--offload", "sideways"],
        "--offload sideways: give",
    ),
    "load device": (
        _load_device,
        "`device='tpu'`: unknown device",
        ["scan", "MODEL", "--device", "tpu"],
        "--device tpu: unknown device",
    ),
    "load max memory": (
        _load_max_memory,
        "`max_memory='lots'`: not a size",
        ["scan", "MODEL", "--max-memory", "lots"],
        "--max-memory lots: not a size",
    ),
    "out is a file": (
        _out_is_a_file,
        "`out='A_FILE'`: exists and is not a directory",
        ["scan", "MODEL", "--out", "A_FILE"],
        "--out A_FILE: exists and is not a directory",
    ),
    "corpus empty file": (
        _corpus_empty_file,
        "`corpus='EMPTY_TXT'`: the file is empty",
        ["scan", "MODEL", "--corpus", "EMPTY_TXT"],
        "--corpus EMPTY_TXT: the file is empty",
    ),
    "perplexity batch size": (_perplexity_batch_size, "`batch_size=0`: must be at least 1", None, None),
    "quant alpha": (
        _quant_alpha,
        "`alpha=1.5`: must be between 0 and 1",
        ["quant", "MODEL", "--alpha", "1.5"],
        "--alpha 1.5: must be between 0 and 1",
    ),
    "quant schemes": (
        _quant_schemes,
        "`schemes` is empty: give at least one scheme",
        ["quant", "MODEL", "--schemes", ","],
        "--schemes is empty: give at least one scheme",
    ),
    "quant super weights": (
        _quant_super_weights,
        "`super_weights=0`: must be at least 1",
        ["quant", "MODEL", "--super-weights", "0"],
        "--super-weights 0: must be at least 1",
    ),
    "quant seq len": (
        _quant_seq_len,
        "`seq_len=1`: must be at least 2",
        ["quant", "MODEL", "--seq-len", "1"],
        "--seq-len 1: must be at least 2",
    ),
    "quant calib samples": (
        _quant_calib_samples,
        "`calib_samples=0`: must be at least 1",
        ["quant", "MODEL", "--calib-samples", "0"],
        "--calib-samples 0: must be at least 1",
    ),
    "rewrite nothing": (
        _rewrite_nothing,
        "give a rewrite: `rescale` ('auto' or a factor), `smooth` (an alpha) and/or `rotate=True`",
        ["rewrite", "MODEL", "--out", "OUT_DIR"],
        "give a rewrite: --rescale ('auto' or a factor), --smooth (an alpha) and/or --rotate",
    ),
    "rewrite rescale": (
        _rewrite_rescale,
        "`rescale='lots'`: give 'auto' or a positive factor",
        ["rewrite", "MODEL", "--rescale", "lots", "--out", "OUT_DIR"],
        "--rescale lots: give 'auto' or a positive factor",
    ),
    "rewrite smooth": (
        _rewrite_smooth,
        "`smooth=1.5`: alpha must be between 0 and 1",
        ["rewrite", "MODEL", "--smooth", "1.5", "--out", "OUT_DIR"],
        "--smooth 1.5: alpha must be between 0 and 1",
    ),
    "rewrite smooth and rotate": (
        _rewrite_smooth_and_rotate,
        "`smooth` and `rotate=True` together are not supported",
        ["rewrite", "MODEL", "--smooth", "0.5", "--rotate", "--out", "OUT_DIR"],
        "--smooth and --rotate together are not supported",
    ),
    "rewrite headroom": (
        _rewrite_headroom,
        "`headroom=2.0`: a fraction of the float16 maximum",
        ["rewrite", "MODEL", "--rescale", "auto", "--headroom", "2", "--out", "OUT_DIR"],
        "--headroom 2.0: a fraction of the float16 maximum",
    ),
    "rewrite check quant": (
        _rewrite_check_quant,
        "`check_quant='w4'`: use w8a8",
        ["rewrite", "MODEL", "--rotate", "--check-quant", "w4", "--out", "OUT_DIR"],
        "--check-quant w4: use w8a8",
    ),
    "rewrite batch size": (
        _rewrite_batch_size,
        "`batch_size=0`: must be at least 1",
        ["rewrite", "MODEL", "--rotate", "--batch-size", "0", "--out", "OUT_DIR"],
        "--batch-size 0: must be at least 1",
    ),
    "rewrite out holds a model": (
        _rewrite_foreign_out,
        "`out='FOREIGN'`: holds another model (config.json)",
        ["rewrite", "MODEL", "--rotate", "--out", "FOREIGN"],
        "--out FOREIGN: holds another model (config.json)",
    ),
    "export format": (
        _export_format,
        "`formats='nosuch'`: does not exist",
        ["export", "MODEL", "--format", "nosuch", "--json"],
        "--format nosuch: does not exist",
    ),
    "export no format": (
        _export_no_format,
        "`formats` is empty: give one or more of",
        ["export", "MODEL", "--format", ",", "--json"],
        "--format is empty: give one or more of",
    ),
    "export seq len": (
        _export_seq_len,
        "`seq_len=0`: must be at least 1",
        ["export", "MODEL", "--seq-len", "0", "--json"],
        "--seq-len 0: must be at least 1",
    ),
    "intervene tasks block by block": (
        _intervene_tasks_blockwise,
        "`tasks` runs the model through lm-evaluation-harness",
        ["intervene", "MODEL", "--tasks", "TASKS", "--offload", "blocks"],
        "--tasks runs the model through lm-evaluation-harness",
    ),
}


def _fill(text: str, tmp_path: Path) -> str:
    places = {
        "MODEL": str(tmp_path / "model"),
        "A_FILE": str(tmp_path / "a_file"),
        "IMAGES": str(tmp_path / "images"),
        "TASKS": str(tmp_path / "tasks"),
        "OUT_DIR": str(tmp_path / "out"),
        "EMPTY_TXT": str(tmp_path / "empty.txt"),
        "FOREIGN": str(tmp_path / "foreign"),
    }
    return re.sub("|".join(places), lambda m: places[m.group(0)], text)


@pytest.fixture
def place(tmp_path, monkeypatch):
    """An empty model folder, a file where a folder is wanted, one image, one local task; no model may load."""
    from PIL import Image

    (tmp_path / "model").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "one.png")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text("{}")
    (tmp_path / "tasks" / "tiny.yaml").write_text(
        "task: massact_tiny\ndataset_path: json\ndataset_kwargs:\n  data_files: tiny.jsonl\n"
        "test_split: train\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\n"
        "doc_to_target: 0\n"
    )
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", _refuse_loading)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refuse_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the bad value was refused")


@pytest.mark.parametrize("name", ROWS)
def test_the_library_names_the_parameter(name, place):
    call, expected, _, _ = ROWS[name]
    with pytest.raises(MassactError) as error:
        call(place) if call.__code__.co_argcount else call()
    message = str(error.value)
    assert _fill(expected, place) in message
    assert "--" not in message, message  # no flag the Python caller never used


@pytest.mark.parametrize("name", [name for name, row in ROWS.items() if row[2] is not None])
def test_the_command_line_names_the_flag(name, place, capsys):
    _, library, argv, expected = ROWS[name]
    if name == "task limit":
        pytest.importorskip("lm_eval")
    code, stdout, stderr = run([_fill(arg, place) for arg in argv], capsys)
    assert code == 2 and stdout == "", stderr
    assert stderr.startswith("massact: error: ") and stderr.count("\n") == 1, stderr
    assert _fill(expected, place) in stderr, stderr
    parameter = re.search(r"`([\w.]+)", library).group(1)  # the first parameter the library names
    assert f"`{parameter}" not in stderr, stderr  # the parameter's mark is gone


def _command(*words: str):
    from massact.cli import build_command

    command = build_command()
    for word in words:
        command = command.commands[word]
    return command


def test_only_marked_parameters_are_translated():
    flags = flags_of(_command("scan").params)
    assert flags["seq_len"] == "--seq-len" and flags["model"] == "MODEL"
    message = "`seq_len=1`: the samples and seq_len of `samples`; run `pip install x`; `nosuch=3`"
    assert (
        to_flags(message, flags) == "--seq-len 1: the samples and seq_len of --samples; run `pip install x`; `nosuch=3`"
    )
    assert to_flags("`corpus='a b'` and `corpus='c.txt'` and `corpus=''`", flags) == (
        "--corpus 'a b' and --corpus c.txt and --corpus ''"
    )
    assert to_flags("pass `add_special_tokens=False` or `trust_remote_code=True`", flags) == (
        "pass --no-special-tokens or --trust-remote-code"
    )
    assert to_flags("`blocks_path='x'` and `thresholds.ratio`", flags) == "--blocks x and --ratio-threshold"
    assert to_flags("`model='m'`", flags) == "MODEL m"


def test_a_parameter_the_command_lacks_keeps_its_name():
    stream_flags = flags_of(_command("stream").params)
    assert to_flags("`top_k=0`", stream_flags) == "`top_k=0`"  # stream has no --top-k
    assert to_flags("`top_k=0`", flags_of(_command("scan").params)) == "--top-k 0"


def test_the_base_layer_imports_no_click_or_typer():
    importers = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("commands/") or relative == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("click", "typer") for n in names):
                importers.append(relative)
    assert importers == []


def test_no_library_message_names_a_flag():
    """Every refusal written outside `commands/` names parameters; a flag appears only inside backticks (a
    command the user pastes, `pip install --no-deps x`)."""
    checks = {"MassactError", "at_least", "check_context", "given", "param"}
    flagged = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("commands/") or relative == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or getattr(node.func, "id", getattr(node.func, "attr", "")) not in checks:
                continue
            strings = (n.value for a in node.args for n in ast.walk(a) if isinstance(n, ast.Constant))
            text = re.sub(r"`[^`]*`", "", "".join(s for s in strings if isinstance(s, str)))
            if re.search(r"(?<![\w-])--[a-z]", text):
                flagged.append(f"{relative}:{node.lineno}")
    assert flagged == []
