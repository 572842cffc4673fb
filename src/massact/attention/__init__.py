"""Attention analysis: capture through the model's own eager attention, sink and implicit-bias measures."""

from massact.attention.analyze import AttentionOptions, AttentionResult, SequenceAttention, analyze, analyze_sequence
from massact.attention.capture import AttentionCall, capture_attention, check_memory
from massact.attention.measures import BlockAttention, measure_call

__all__ = [
    "AttentionCall",
    "AttentionOptions",
    "AttentionResult",
    "BlockAttention",
    "SequenceAttention",
    "analyze",
    "analyze_sequence",
    "capture_attention",
    "check_memory",
    "measure_call",
]
