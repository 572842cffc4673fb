"""Attention analysis: capture through the model's own eager attention, sink and implicit-bias measures.

`run(loaded, prompt_or_ids_or_input, AttentionConfig(...)) -> AttentionResult`.
"""

from massact.attention.analyze import AttentionResult, SequenceAttention, analyze_sequence, analyze_sequences, run
from massact.attention.capture import AttentionCall, capture_attention, check_memory
from massact.attention.config import AttentionConfig
from massact.attention.inputs import PAPER_PROMPT, AttentionInput, corpus_input, prompt_input
from massact.attention.measures import BlockAttention, measure_call

__all__ = [
    "PAPER_PROMPT",
    "AttentionCall",
    "AttentionConfig",
    "AttentionInput",
    "AttentionResult",
    "BlockAttention",
    "SequenceAttention",
    "analyze_sequence",
    "analyze_sequences",
    "capture_attention",
    "check_memory",
    "corpus_input",
    "measure_call",
    "prompt_input",
    "run",
]
