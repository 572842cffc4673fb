"""Exact, function-preserving rewrites of the residual stream, saved as a model any tool loads.

`run(loaded, inputs, RewriteConfig(rescale="auto"))` rescales (float16 headroom), smooths
(SmoothQuant, folded) and/or rotates (orthogonal, folded) a copy of the model, saves it as a plain
transformers folder, reloads it with `from_pretrained` and measures what changed.
"""

from massact.rewrite.config import RewriteConfig, parse_rescale
from massact.rewrite.layout import Layout, find_layout
from massact.rewrite.result import RewriteResult
from massact.rewrite.run import run

__all__ = ["Layout", "RewriteConfig", "RewriteResult", "find_layout", "parse_rescale", "run"]
