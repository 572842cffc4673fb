"""Scan: one forward pass, every block summarised, massive activations located.

`run(loaded, prompt_or_ids, ScanConfig(...)) -> ScanResult`; `scan(loaded, prompt, config=None)` is its
short form for a text (`massact.scan`).
"""

from massact.defaults import DEFAULT_PROMPT
from massact.scan.config import ScanConfig
from massact.scan.result import MassiveActivation, ScanResult, find_massive, summarize_massive
from massact.scan.run import run, scan
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
