"""What each atlas step gets: the model, the atlas's settings, and what the steps before it left."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from massact.atlas.config import AtlasConfig
from massact.atlas.model_run import StepOutput
from massact.models.loading import LoadedModel


@dataclass
class Context:
    """What a step gets: the model and the atlas's settings, and what the steps before it left."""

    loaded: LoadedModel
    config: AtlasConfig
    scan: dict | None = None  # the scan step's JSON
    first_block: int | None = None  # the first block with a massive site, from the scan step
    extra: dict = field(default_factory=dict)  # anything else a step leaves for later ones
    outputs: dict[str, StepOutput] = field(default_factory=dict)  # step -> its result, written as a run folder


def analysis(name: str) -> ModuleType:
    """An analysis package, or an error that says it is not part of this install."""
    try:
        return importlib.import_module(f"massact.{name}")
    except ImportError as exc:
        raise RuntimeError(f"massact.{name} is not available ({exc})") from None
