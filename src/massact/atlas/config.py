"""Every knob of an atlas run, checked before any model is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from massact.atlas.registry import step_names
from massact.defaults import ATLAS_STEPS, DEFAULT_CORPUS, DEFAULT_PROMPT
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.loading import OFFLOADS
from massact.models.memory import parse_size
from massact.validate import at_least, check_prompt, given

STEPS = ATLAS_STEPS  # the built-in steps, as `massact atlas --help` names them; `step_names()`: all registered
EXECUTION = ("offload", "max_memory")  # how models run, not what is computed


@dataclass(frozen=True)
class AtlasConfig:
    """What each model goes through: the scan prompt, the corpus windows, and which analyses run."""

    prompt: str = DEFAULT_PROMPT  # the text each model's scan reads
    corpus: str = DEFAULT_CORPUS  # corpus name or text file of the windows
    samples: int = 8  # corpus windows per model
    seq_len: int = 128  # tokens per window
    seed: int = 0  # which windows are drawn
    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion
    steps: tuple[str, ...] = field(default_factory=step_names)  # the analyses run on each model (default: all)
    dtype: str = "auto"  # the dtype each model is loaded in
    device: str | None = None  # cpu, cuda, cuda:N or mps (default: the default device)
    trust_remote_code: bool = False  # let models run code of their own from their folder or hub id
    offload: str = "auto"  # each model in memory ("none"), block by block ("blocks"), or blocks when it does not fit
    max_memory: str | None = None  # the budget "auto" and block execution keep to (default: what is available)

    def __post_init__(self) -> None:
        check_prompt(self.prompt)
        if self.offload not in OFFLOADS:
            raise MassactError(f"`offload={self.offload!r}`: give {', '.join(OFFLOADS[:-1])} or {OFFLOADS[-1]}")
        if self.max_memory is not None:
            parse_size(self.max_memory, "max_memory")
        at_least("samples", self.samples)
        at_least("seq_len", self.seq_len, 2)
        if not self.corpus:
            raise MassactError("`corpus` is empty; give a corpus name (e.g. shakespeare) or a text file")
        known = step_names()
        unknown = [s for s in self.steps if s not in known]
        if unknown:
            raise MassactError(f"{given('steps', ','.join(unknown))}: unknown; choose from {', '.join(known)}")

    def to_json(self) -> dict:
        """What each row was computed with; how models ran (`execution`) is left out: it changes no number."""
        data = asdict(self)
        for name in EXECUTION:
            data.pop(name)
        data["thresholds"] = self.thresholds.to_json()
        data["steps"] = list(self.steps)
        return data

    def execution(self) -> dict:
        """How models are run: `offload` and `max_memory` as asked (each row's `execution` says what ran)."""
        return {name: getattr(self, name) for name in EXECUTION}
