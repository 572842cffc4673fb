"""Scan: one forward pass, every block summarised, massive activations located.

`run(loaded, prompt_or_ids, ScanConfig(...)) -> ScanResult`; `scan(loaded, prompt, config=None)` is its
short form for a text. The package itself is callable as that short form, so `massact.scan(loaded, prompt)` and
`massact.scan.run` both work whatever was imported first.
"""

import sys
import types

from massact.defaults import DEFAULT_PROMPT
from massact.scan.config import ScanConfig
from massact.scan.result import MassiveActivation, ScanResult, find_massive, summarize_massive
from massact.scan.run import run, scan
from massact.tokens import TextInput, ids_input, tokenize_prompt


class _CallableModule(types.ModuleType):
    """`massact.scan(...)` is `massact.scan.scan(...)`: the package and its short form answer to one name."""

    def __call__(self, *args: object, **kwargs: object) -> ScanResult:
        return scan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "DEFAULT_PROMPT",
    "MassiveActivation",
    "ScanConfig",
    "ScanResult",
    "TextInput",
    "find_massive",
    "ids_input",
    "run",
    "scan",
    "summarize_massive",
    "tokenize_prompt",
]
