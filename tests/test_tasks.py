"""Zero-shot tasks through the real lm-evaluation-harness, on planted tiny models and a local task.

Each test writes a multiple-choice task (a YAML and a JSONL) into a temporary directory. The
expected accuracy is computed here with plain torch: the log-likelihood of each choice after its
context, argmax (acc) and argmax per character (acc_norm). The labels are chosen from those direct
computations so that the planted model gets a known set of items right with its massive activation
and loses some of them when a hook zeroes it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from pathlib import Path

import pytest
import torch
from planting import MARK, VOCAB, plant_massive, tiny_model, word_tokenizer

from massact.errors import MassactError
from massact.format import md_escape
from massact.interventions.hooks import intervene
from massact.interventions.sites import SiteSpec
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.tasks import INSTALL_HINT, PAPER_TASKS, TaskConfig, TaskScores, evaluate, parse_tasks, prepare

FAMILIES = ["llama", "gpt2"]  # the LLaMA tokenizer adds a BOS (the planted token); the GPT-2 one adds nothing
PLANT_BLOCK, PLANT_DIM = 1, 9
MARK_WORD = "<mark>"


def word(i: int) -> str:
    """Words of 3 to 5 characters, so that acc_norm (per character) can differ from acc."""
    return {0: "<eos>", 1: "<unk>", MARK: MARK_WORD}.get(i, "w" * (1 + i % 3) + str(i))


def planted(family: str) -> LoadedModel:
    model = tiny_model(family)
    plant_massive(model, block=PLANT_BLOCK, dim=PLANT_DIM)
    return LoadedModel(model=model, tokenizer=word_tokenizer(word, bos=family == "llama", eos=0), name=f"tiny-{family}")


def random_items(family: str, count: int = 16, seed: int = 3) -> list[dict]:
    """Contexts of 1-3 words (led by the MARK word when the tokenizer adds no BOS) and 2-4 choices.

    Choices are one word each on even items (their log-likelihoods are close, so the plant decides
    some of them) and 1-3 words on odd items.
    """
    generator = torch.Generator().manual_seed(seed)

    def words(n: int) -> list[str]:
        return [word(int(i)) for i in torch.randint(10, VOCAB, (n,), generator=generator)]

    items = []
    for index in range(count):
        lead = [] if family == "llama" else [MARK_WORD]
        context = " ".join(lead + words(int(torch.randint(1, 4, (1,), generator=generator))))
        sizes = range(1, int(torch.randint(2, 5, (1,), generator=generator)) + 1)
        choices = [" ".join(words(1 if index % 2 == 0 else k)) for k in sizes]
        items.append({"context": context, "choices": choices})
    return items


def write_task(folder: Path, name: str, items: list[dict], cache: Path) -> Path:
    """A harness task directory: NAME.yaml reading items.jsonl from this folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {folder / 'items.jsonl'}\n"
        f"  cache_dir: {cache}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        encoding="utf-8",
    )
    return folder


@torch.no_grad()
def direct_picks(loaded: LoadedModel, items: list[dict]) -> tuple[list[int], list[int]]:
    """Per item: argmax of the choices' summed log-probabilities, and of that sum per character."""
    tokenizer = loaded.tokenizer
    picks, norm_picks = [], []
    for item in items:
        context = tokenizer(item["context"]).input_ids
        lls = []
        for choice in item["choices"]:
            continuation = tokenizer(choice, add_special_tokens=False).input_ids
            ids = torch.tensor([context + continuation])
            logprobs = loaded.model(input_ids=ids).logits.float().log_softmax(-1)[0]
            lls.append(sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(continuation)))
        scores = torch.tensor(lls, dtype=torch.float64)
        lengths = torch.tensor([len(c) for c in item["choices"]], dtype=torch.float64)
        picks.append(int(scores.argmax()))
        norm_picks.append(int((scores / lengths).argmax()))
    return picks, norm_picks


def accuracy(picks: list[int], items: list[dict]) -> float:
    return sum(p == item["label"] for p, item in zip(picks, items)) / len(items)


def zero_plant(loaded: LoadedModel):
    return intervene(loaded.model, find_structure(loaded.model), SiteSpec(), "zero", PLANT_BLOCK)


@pytest.fixture
def offline(monkeypatch):
    """No network: the harness must run local tasks without reaching a hub."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def hooks(model: torch.nn.Module) -> dict[str, list]:
    """Every forward (pre-)hook on the model, by module name (transformers installs its own output-capturing
    hooks once a forward asks for hidden states or attentions; those stay, as they should)."""
    return {
        name: [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


def no_hooks(model: torch.nn.Module) -> bool:
    return not hooks(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_harness_accuracy_matches_direct_and_sees_the_hooks(family, tmp_path, offline):
    loaded = planted(family)
    items = random_items(family)
    picks, norm_picks = direct_picks(loaded, items)
    with zero_plant(loaded):
        zero_picks, zero_norm_picks = direct_picks(loaded, items)
    flipped = [i for i in range(len(items)) if picks[i] != zero_picks[i]]
    assert flipped, "precondition: zeroing the planted activation must change some answer"
    for i, item in enumerate(items):  # right with the plant where zeroing flips it; else right on even items
        n = len(item["choices"])
        item["label"] = picks[i] if i in flipped or i % 2 == 0 else (picks[i] + 1) % n
    task = write_task(tmp_path / "task", "tiny_choice", items, tmp_path / "cache")
    config = TaskConfig(parse_tasks(str(task)), batch_size=4)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    pad_before = loaded.tokenizer.pad_token

    original = evaluate(loaded, config)
    runs = []

    @contextlib.contextmanager
    def zero_context():
        with zero_plant(loaded) as run:
            runs.append(run)
            yield run

    zeroed = evaluate(loaded, config, zero_context)

    assert original["tiny_choice"].samples == len(items)
    assert original["tiny_choice"].acc == pytest.approx(accuracy(picks, items), abs=1e-12)
    assert original["tiny_choice"].acc_norm == pytest.approx(accuracy(norm_picks, items), abs=1e-12)
    assert zeroed["tiny_choice"].acc == pytest.approx(accuracy(zero_picks, items), abs=1e-12)
    assert zeroed["tiny_choice"].acc_norm == pytest.approx(accuracy(zero_norm_picks, items), abs=1e-12)
    assert zeroed["tiny_choice"].acc < original["tiny_choice"].acc
    assert original["tiny_choice"].acc_stderr is not None
    # the hook saw the harness's forwards and rewrote the planted site of every sequence
    (hooked,) = runs
    assert hooked.counts.sequences[PLANT_BLOCK] >= len(items)
    assert hooked.counts.sites[PLANT_BLOCK] >= hooked.counts.sequences[PLANT_BLOCK]
    # and everything is as it was: weights, hooks, the caller's tokenizer
    assert no_hooks(loaded.model)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    assert loaded.tokenizer.pad_token == pad_before
    assert not loaded.model.training


@pytest.mark.parametrize("family", FAMILIES)
def test_limit_scores_the_first_items(family, tmp_path, offline):
    loaded = planted(family)
    items = random_items(family, count=10, seed=5)
    picks, _ = direct_picks(loaded, items)
    for i, item in enumerate(items):
        item["label"] = picks[i] if i % 3 else (picks[i] + 1) % len(item["choices"])
    task = write_task(tmp_path / "task", "tiny_limit", items, tmp_path / "cache")
    loaded.model.train()  # the harness scores in eval mode (GPT-2 has dropout); the caller's mode comes back
    scores = evaluate(loaded, TaskConfig(parse_tasks(str(task)), limit=4, batch_size=2))
    assert loaded.model.training
    assert scores["tiny_limit"].samples == 4
    assert scores["tiny_limit"].acc == pytest.approx(accuracy(picks[:4], items[:4]), abs=1e-12)
    assert scores.mean_acc == scores["tiny_limit"].acc


def test_two_local_tasks_and_written_results(tmp_path, offline):
    loaded = planted("llama")
    items = random_items("llama", count=6, seed=7)
    picks, _ = direct_picks(loaded, items)
    right = [dict(item, label=p) for item, p in zip(items, picks)]
    wrong = [dict(item, label=(p + 1) % len(item["choices"])) for item, p in zip(items, picks)]
    a = write_task(tmp_path / "a", "all_right", right, tmp_path / "cache")
    b = write_task(tmp_path / "b", "all_wrong", wrong, tmp_path / "cache")
    config = TaskConfig(parse_tasks(f"{a}, {b} ,{a}"))
    assert config.tasks == (str(a.resolve()), str(b.resolve()))
    assert prepare(config) == ("all_right", "all_wrong")
    scores = evaluate(loaded, config)
    assert (scores["all_right"].acc, scores["all_wrong"].acc) == (1.0, 0.0)
    assert scores.mean_acc == 0.5
    assert TaskScores.from_json(scores.to_json()) == scores
    scores.write(tmp_path)
    data = json.loads((tmp_path / "tasks.json").read_text())
    assert data["tasks"]["all_wrong"]["acc"] == 0.0 and data["num_fewshot"] == 0 and data["limit"] is None
    report = (tmp_path / "report.md").read_text()
    assert f"| {md_escape('all_right')} | 6 | 100.00 |" in report and "| mean | | 50.00 |" in report


@pytest.mark.slow  # indexes the harness's ~15,000 bundled task configs (several seconds)
def test_parse_tasks_knows_the_harness_task_names():
    assert parse_tasks("arc_easy, piqa,arc_easy") == ("arc_easy", "piqa")
    assert parse_tasks(",".join(PAPER_TASKS)) == PAPER_TASKS
    with pytest.raises(MassactError, match=r"unknown task\(s\) no_such_task_xyz; give names lm-eval knows"):
        parse_tasks("arc_easy,no_such_task_xyz")


def test_parse_tasks_checks_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    bad = [
        (str(tmp_path / "missing"), "no such task directory"),
        (str(tmp_path / "empty"), "no task found there"),
        (" , ", "`tasks` is empty"),
    ]
    for spec, message in bad:
        with pytest.raises(MassactError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            parse_tasks(spec)
        assert "\n" not in str(info.value)


def test_missing_data_fails_in_prepare(tmp_path, offline):
    task = write_task(tmp_path / "task", "no_data", [{"context": "w10", "choices": ["ww11"], "label": 0}], tmp_path)
    (task / "items.jsonl").unlink()
    with pytest.raises(MassactError, match="task no_data: its data could not be loaded"):
        prepare(TaskConfig(parse_tasks(str(task))))


def test_config_is_validated():
    for kwargs, message in [
        ({"tasks": ()}, "no tasks given"),
        ({"tasks": "arc_easy"}, "tuple of task names"),
        ({"tasks": ("arc_easy",), "limit": 0}, "`limit=0`"),
        ({"tasks": ("arc_easy",), "batch_size": 0}, "`batch_size=0`"),
        ({"tasks": ("arc_easy",), "num_fewshot": -1}, "`num_fewshot=-1`"),
    ]:
        with pytest.raises(MassactError, match=message):
            TaskConfig(**kwargs)


def test_without_the_harness_one_line_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails as if not installed
    loaded = planted("gpt2")
    with pytest.raises(MassactError) as info:
        parse_tasks("arc_easy")
    assert str(info.value) == INSTALL_HINT and "pip install 'massact[eval]'" in INSTALL_HINT
    with pytest.raises(MassactError, match=r"pip install 'massact\[eval\]'"):
        evaluate(loaded, TaskConfig((str(tmp_path),)))


def test_model_without_tokenizer_is_refused(tmp_path):
    loaded = planted("llama")
    task = write_task(tmp_path / "task", "tiny_x", [{"context": "w10", "choices": ["ww11"], "label": 0}], tmp_path)
    with pytest.raises(MassactError, match="has no tokenizer"):
        evaluate(LoadedModel(model=loaded.model, tokenizer=None, name="m"), TaskConfig(parse_tasks(str(task))))


DOCS_TASK = Path(__file__).resolve().parents[1] / "docs" / "tasks" / "massact_basics"


@torch.no_grad()
def harness_style_picks(loaded: LoadedModel, items: list[dict]) -> list[int]:
    """Argmax of the choices' log-likelihoods, the text cut where the context's own tokens end (BPE-safe)."""
    picks = []
    for item in items:
        context = loaded.tokenizer(item["question"]).input_ids
        lls = []
        for choice in item["choices"]:
            ids = loaded.tokenizer(item["question"] + " " + choice).input_ids
            logprobs = loaded.model(input_ids=torch.tensor([ids[:-1]])).logits.float().log_softmax(-1)[0]
            lls.append(sum(float(logprobs[i - 1, ids[i]]) for i in range(len(context), len(ids))))
        picks.append(int(torch.tensor(lls).argmax()))
    return picks


@pytest.mark.slow
def test_bundled_model_on_the_docs_task(smollm2, offline):
    from massact.interventions import mode_context

    items = [json.loads(line) for line in (DOCS_TASK / "items.jsonl").read_text().splitlines()][:6]
    config = TaskConfig(parse_tasks(str(DOCS_TASK)), limit=6)
    before = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    hooks_before = hooks(smollm2.model)  # the session's model: earlier tests may have run transformers' capture
    pad = smollm2.tokenizer.pad_token
    scores = evaluate(smollm2, config)
    assert scores["massact_basics"].acc == pytest.approx(accuracy(harness_style_picks(smollm2, items), items))

    def zero():
        return mode_context(smollm2, None, SiteSpec(), "zero", None, "11")

    zeroed = evaluate(smollm2, config, zero)
    with zero():
        expected = accuracy(harness_style_picks(smollm2, items), items)
    assert zeroed["massact_basics"].acc == pytest.approx(expected)
    assert all(torch.equal(before[k], v) for k, v in smollm2.model.state_dict().items())
    assert smollm2.tokenizer.pad_token == pad and hooks(smollm2.model) == hooks_before


@pytest.mark.parametrize("command", ["intervene", "quant"])
def test_tasks_option_refuses_unknown_tasks_before_loading(command, capsys, tmp_path):
    from cli_runner import run

    no_model = tmp_path / "empty"  # a folder with no model: the error names the tasks, so it was never loaded
    no_model.mkdir()
    code, out, err = run([command, str(no_model), "--tasks", str(tmp_path / "no-task-dir")], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no-task-dir" in err


@pytest.mark.slow
def test_intervene_tasks_option_runs_each_mode_under_its_hooks(smollm2, offline, capsys, tmp_path):
    """`massact intervene --tasks`: each mode's accuracy equals direct scoring under that mode's hooks."""
    from cli_runner import run

    from massact.interventions import mode_context

    argv = ["intervene", "default", "--tasks", str(DOCS_TASK), "--tasks-limit", "6", "--modes", "original,zero"]
    code, out, _ = run([*argv, "--block", "11", "--samples", "1", "--seq-len", "32", "--json"], capsys)
    assert code == 0
    rows = {row["mode"]: row["tasks"]["tasks"]["massact_basics"] for row in json.loads(out)["rows"]}
    items = [json.loads(line) for line in (DOCS_TASK / "items.jsonl").read_text().splitlines()][:6]
    original = accuracy(harness_style_picks(smollm2, items), items)
    with mode_context(smollm2, None, SiteSpec(), "zero", None, "11"):
        zeroed = accuracy(harness_style_picks(smollm2, items), items)
    assert rows["original"]["samples"] == rows["zero"]["samples"] == 6
    assert rows["original"]["acc"] == pytest.approx(original, abs=1e-12)
    assert rows["zero"]["acc"] == pytest.approx(zeroed, abs=1e-12)
    assert original != zeroed


@pytest.mark.parametrize("family", FAMILIES)
def test_quant_tasks_score_each_setting_under_its_quantization(family, tmp_path, offline):
    """`massact.quant.run` with tasks: the unquantized and quantized rows equal direct scoring.

    Per-token activation scales, so that the harness's batching (which sets per-tensor scales) cannot matter.
    """
    from massact.detect import Thresholds
    from massact.quant import QuantConfig, QuantInputs
    from massact.quant import run as quant_run
    from massact.quant.calibrate import calibrate
    from massact.quant.schemes import parse_scheme
    from massact.quant.simulate import quant_context

    loaded = planted(family)
    items = random_items(family)
    for item, pick in zip(items, direct_picks(loaded, items)[0]):
        item["label"] = pick  # the unquantized model gets every item right
    tasks = TaskConfig(parse_tasks(str(write_task(tmp_path / "task", "tiny_task", items, tmp_path / "cache"))))
    drawn = torch.randint(10, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    inputs = QuantInputs(windows=drawn[:2], calibration=drawn[2:])
    config = QuantConfig(schemes=("W3A3-token",), strategies=("none",), sensitivity=None, tasks=tasks, progress=False)
    result = quant_run(loaded, inputs, config)
    assert result.baseline["tasks"]["tasks"]["tiny_task"]["acc"] == 1.0
    calibration = calibrate(loaded, inputs.calibration, thresholds=Thresholds(), progress=False)
    with quant_context(loaded, parse_scheme("W3A3-token"), "none", calibration):
        expected = accuracy(direct_picks(loaded, items)[0], items)
    assert result.rows[0]["tasks"]["tasks"]["tiny_task"]["acc"] == pytest.approx(expected)
    assert expected < 1.0  # the quantization was active while the harness scored
    assert no_hooks(loaded.model)
