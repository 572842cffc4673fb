"""Many models side by side: massive sites, constancy, super weights, sinks, headroom and W8A8 cost per model.

`run(models, cache, AtlasConfig(...)) -> AtlasResult`; `result.write(folder)` writes the table and each model's
runs. Finished models kept in `cache` (a folder, or None) are reused on a rerun. Each analysis the atlas runs is a
step registered with `@atlas_step(name, fields=..., after=...)`: a function of the `Context` that returns its fields.
"""

from massact.atlas.config import STEPS, AtlasConfig
from massact.atlas.context import Context
from massact.atlas.registry import atlas_step
from massact.atlas.result import AtlasResult
from massact.atlas.run import run

__all__ = ["STEPS", "AtlasConfig", "AtlasResult", "Context", "atlas_step", "run"]
