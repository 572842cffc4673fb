"""Run lm-evaluation-harness on an already-loaded model, with the caller's hooks active.

The harness's own HF wrapper (`HFLM`) wraps the loaded model object (no second copy), the
harness's `TaskManager` loads the tasks and `lm_eval.evaluate` does all tokenization and scoring;
`context()` is entered around the whole evaluation, so intervention or quantization hooks apply to
every forward pass the harness makes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.tasks.scores import TaskScores
from massact.tasks.spec import TaskConfig, parse_tasks, require_harness

Context = Callable[[], AbstractContextManager]


@contextlib.contextmanager
def quiet_harness() -> Iterator[None]:
    """Keep the harness's info and warning logs (about passing a model object, default metrics) off stderr."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_tasks(config: TaskConfig) -> dict:
    """The harness's task dict for `config` (hub datasets download here), set to `config.num_fewshot`."""
    from lm_eval.defaults import DEFAULT_OTHER_SEED  # the harness's seed for drawing few-shot examples

    names = config.run_names()
    manager = config.manager()
    with quiet_harness():
        try:
            tasks = manager.load(list(names))
        except Exception:  # the harness and `datasets` raise many kinds; find the task and say it in one line
            for name in names:
                try:
                    manager.load([name])
                except Exception as error:
                    first = (str(error).strip().splitlines() or [""])[0][:200]
                    raise MassactError(
                        f"task {name}: its data could not be loaded ({type(error).__name__}: {first}); hub "
                        "tasks need a connection the first time, or give a local task directory"
                    ) from None
            raise
    for task in tasks["tasks"].values():  # as `lm_eval.simple_evaluate` does: a task fixed at 0-shot stays so
        if task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=config.num_fewshot)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    return tasks


def prepare(config: TaskConfig) -> tuple[str, ...]:
    """Load every task's data once (hub tasks download here), so missing data fails before a model loads.

    Returns the harness names that `evaluate` will run.
    """
    require_harness()
    load_tasks(config)
    return config.run_names()


def task_config(spec: str | None, limit: int | None = None, batch_size: int = 8) -> TaskConfig | None:
    """The `--tasks SPEC --tasks-limit N` of a command as a prepared `TaskConfig` (None without --tasks).

    Unknown names, bad paths, missing task data and a missing harness fail here, before a model loads.
    """
    if not spec:
        return None
    config = TaskConfig(parse_tasks(spec), limit=limit, batch_size=batch_size)
    prepare(config)
    return config


def check_model(loaded: LoadedModel) -> None:
    """Refuse models the harness cannot score: no tokenizer, or no language-model head."""
    if loaded.tokenizer is None:
        raise MassactError(f"{loaded.name} has no tokenizer; zero-shot tasks need a text model with its tokenizer")
    head = getattr(loaded.model, "get_output_embeddings", lambda: None)()
    if head is None:
        raise MassactError(f"{loaded.name} has no language-model head; zero-shot tasks need a causal language model")


def evaluate(loaded: LoadedModel, config: TaskConfig, context: Context = contextlib.nullcontext) -> TaskScores:
    """Accuracy (and acc_norm) of `loaded` on `config.tasks`, scored by the harness while `context()` is active."""
    require_harness()
    check_model(loaded)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks = load_tasks(config)
    model = loaded.model
    training = model.training
    tokenizer = copy.deepcopy(loaded.tokenizer)  # the harness may set a pad token on it
    try:
        with quiet_harness():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=config.batch_size)
            with context():
                results = lm_eval.evaluate(lm, tasks, limit=config.limit, log_samples=False)
    finally:
        model.train(training)
    return TaskScores.from_harness(results, lm_eval.__version__, config.num_fewshot, config.limit)
