"""`QuantConfig`: every knob of a quantization run, names parsed and checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field

from massact.defaults import DEFAULT_SCHEMES, DEFAULT_STRATEGIES
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.quant.schemes import parse_scheme
from massact.quant.strategies import BEST, parse_strategy, parts
from massact.tasks import TaskConfig
from massact.validate import at_least, given


@dataclass(frozen=True)
class QuantConfig:
    """Every knob of a quantization run; names are parsed and checked on construction."""

    schemes: tuple[str, ...] = DEFAULT_SCHEMES  # names such as "W8A8", "W8A8-token", "W4A8", "KV4"
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES  # none, best, or parts joined by +: outlier-tokens+smooth
    alpha: float = 0.5  # smoothing strength
    seed: int = 0  # seed of the rotations
    super_weights: int = 4  # top weight entries per traced site kept by keep-super-weights
    sensitivity: str | None = "W8A8"  # scheme of the per-block sensitivity; None skips it
    sensitivity_samples: int = 2  # evaluated windows used for the sensitivity
    best_samples: int = 2  # calibration windows on which `best` compares its candidates
    batch_size: int = 4  # windows per forward: a per-tensor activation scale spans them all
    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion that finds the outlier tokens
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself
    progress: bool = True  # progress lines on a terminal
    tasks: TaskConfig | None = None  # zero-shot tasks through lm-eval, once per (scheme, strategy)

    def __post_init__(self) -> None:
        if not self.schemes:
            raise MassactError("`schemes` is empty: give at least one scheme, such as W8A8")
        if not self.strategies:
            raise MassactError("`strategies` is empty: give at least one strategy, such as none")
        object.__setattr__(self, "schemes", tuple(dict.fromkeys(parse_scheme(s).name for s in self.schemes)))
        object.__setattr__(self, "strategies", tuple(dict.fromkeys(parse_strategy(s) for s in self.strategies)))
        if self.sensitivity is not None:
            object.__setattr__(self, "sensitivity", parse_scheme(self.sensitivity).name)
        if not 0.0 <= self.alpha <= 1.0:
            raise MassactError(f"{given('alpha', self.alpha)}: must be between 0 and 1 (SmoothQuant uses 0.5)")
        for name, value in (
            ("batch_size", self.batch_size),
            ("sensitivity_samples", self.sensitivity_samples),
            ("best_samples", self.best_samples),
            ("super_weights", self.super_weights),
        ):
            at_least(name, value)

    @property
    def needs_super_weights(self) -> bool:
        return BEST in self.strategies or any("keep-super-weights" in parts(s) for s in self.strategies if s != BEST)
