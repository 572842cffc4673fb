"""Zero-shot accuracy through lm-evaluation-harness, with massact's hooks active during the harness's forwards."""

from massact.tasks.harness import evaluate, prepare, task_config
from massact.tasks.scores import TaskScore, TaskScores
from massact.tasks.spec import INSTALL_HINT, PAPER_TASKS, TaskConfig, parse_tasks, require_harness

__all__ = [
    "INSTALL_HINT",
    "PAPER_TASKS",
    "TaskConfig",
    "TaskScore",
    "TaskScores",
    "evaluate",
    "parse_tasks",
    "prepare",
    "require_harness",
    "task_config",
]
