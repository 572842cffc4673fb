"""Scan: one forward pass, every block summarised, massive activations located.

`run(loaded, prompt_or_ids, ScanConfig(...)) -> ScanResult`; `scan(loaded, prompt, **options)` is the
same with keyword options.
"""

from massact.defaults import DEFAULT_PROMPT
from massact.scan.result import MassiveActivation, ScanResult, find_massive, summarize_massive
from massact.scan.run import ScanConfig, run, scan
from massact.tokens import TextInput, ids_input, tokenize_prompt

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
