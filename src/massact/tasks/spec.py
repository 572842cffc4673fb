"""What to evaluate: `--tasks` parsed into harness task names and local task directories."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from massact.errors import MassactError, install_hint
from massact.validate import given

INSTALL_HINT = f"zero-shot tasks need lm-evaluation-harness: run `{install_hint('eval')}`"
PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande")


def require_harness() -> None:
    """Raise the one-line install hint when lm-evaluation-harness is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise MassactError(INSTALL_HINT) from None


@functools.lru_cache(maxsize=4)
def task_manager(include: tuple[str, ...] = (), defaults: bool = True):
    """The harness's task index over its own tasks (when `defaults`) and the directories in `include`."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def is_path(entry: str) -> bool:
    """True for a task directory or YAML file (parsed entries are absolute paths), False for a task name."""
    return Path(entry).is_absolute()


def local_task_names(path: str) -> tuple[str, ...]:
    """The tasks a local directory (or YAML file) defines: its groups when it has any, else its tasks."""
    folder = Path(path)
    manager = task_manager((str(folder if folder.is_dir() else folder.parent),), False)
    if folder.is_file():
        return tuple(name for name in manager.all_tasks if manager.task_index[name].yaml_path == folder)
    return tuple(manager.all_groups) or tuple(manager.all_subtasks)


def parse_tasks(spec: str) -> tuple[str, ...]:
    """Split comma-separated task names and task paths; paths come back absolute, names checked against the harness."""
    require_harness()
    items = list(dict.fromkeys(item.strip() for item in spec.split(",") if item.strip()))
    if not items:
        raise MassactError(f"`tasks` is empty; give task names such as {','.join(PAPER_TASKS[:2])} or a task directory")
    entries: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        is_yaml = path.suffix in (".yaml", ".yml")
        if path.is_dir() or (is_yaml and path.is_file()):
            entry = str(path.resolve())
            if not local_task_names(entry):
                raise MassactError(
                    f"{given('tasks', item)}: no task found there; give a directory of lm-eval task YAML files "
                    "(each with `task:` or `group:`)"
                )
            entries.append(entry)
        elif is_yaml or "/" in item or item.startswith((".", "~")):
            raise MassactError(f"{given('tasks', item)}: no such task directory or YAML file")
        else:
            entries.append(item)
    names = [e for e in entries if not is_path(e)]
    if names:
        known = set(task_manager(local_dirs(entries), True).all_tasks)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise MassactError(
                f"unknown task(s) {', '.join(unknown)}; give names lm-eval knows (`lm-eval ls tasks`) "
                "or a path to a local task directory"
            )
    return tuple(entries)


def local_dirs(entries: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The directories the harness must index for the path entries of `entries`."""
    dirs = [Path(e) if Path(e).is_dir() else Path(e).parent for e in entries if is_path(e)]
    return tuple(dict.fromkeys(str(d) for d in dirs))


@dataclass(frozen=True)
class TaskConfig:
    """Which harness tasks to run and how (`tasks` from `parse_tasks`)."""

    tasks: tuple[str, ...]  # harness task names or task paths (`parse_tasks`)
    limit: int | None = None  # items per task (None: all)
    batch_size: int = 8  # requests per forward pass
    num_fewshot: int = 0  # few-shot examples per item

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            raise MassactError("TaskConfig.tasks must be a tuple of task names or paths; use parse_tasks(spec)")
        if not self.tasks:
            raise MassactError("no tasks given; name at least one task, e.g. `tasks=('arc_easy',)`")
        if self.limit is not None and self.limit < 1:
            raise MassactError(f"`limit={self.limit}`: give at least 1 item per task, or leave it out for all")
        if self.batch_size < 1:
            raise MassactError(f"`batch_size={self.batch_size}`: give at least 1")
        if self.num_fewshot < 0:
            raise MassactError(f"`num_fewshot={self.num_fewshot}`: give 0 or more examples")

    def run_names(self) -> tuple[str, ...]:
        """Harness names to evaluate: the names given, and every task of each given directory."""
        names: list[str] = []
        for entry in self.tasks:
            names += local_task_names(entry) if is_path(entry) else [entry]
        return tuple(dict.fromkeys(names))

    def manager(self):
        """The harness task index that resolves `run_names()`."""
        has_names = any(not is_path(e) for e in self.tasks)
        return task_manager(local_dirs(self.tasks), has_names)
