"""Exact, function-preserving rewrites of the residual stream, saved as a model any tool loads.

`run(loaded, inputs, RewriteConfig(rescale="auto"))` rescales (float16 headroom), smooths
(SmoothQuant, folded) and/or rotates (orthogonal, folded) a copy of the model, saves it as a plain
transformers folder, reloads it with `from_pretrained` and measures what changed. A model loaded with
`offload="blocks"` is rewritten one block at a time (`plan`, `save`) and reloaded block by block; only
`check_quant` needs the whole model in memory. The names are imported on first use, so the command's option
checks (`config`, `folder`) answer without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from massact.rewrite.config import RewriteConfig, parse_rescale

if TYPE_CHECKING:
    from massact.residual.layout import Layout, find_layout
    from massact.rewrite.result import RewriteResult
    from massact.rewrite.run import run

_LAZY = {
    "Layout": "massact.residual.layout",
    "find_layout": "massact.residual.layout",
    "RewriteResult": "massact.rewrite.result",
    "run": "massact.rewrite.run",
}
__all__ = ["Layout", "RewriteConfig", "RewriteResult", "find_layout", "parse_rescale", "run"]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'massact.rewrite' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # importing the module `run` bound that name to the module: the function wins
    return value
