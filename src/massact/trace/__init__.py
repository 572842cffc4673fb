"""Trace massive activations to the weights that write them, and verify by editing those weights."""

from massact.trace.analysis import TraceResult, trace
from massact.trace.edit import zeroed_entries
from massact.trace.linear import WriterLinear, find_writer_linear
from massact.trace.writer import SiteTrace, WeightEntry

__all__ = [
    "SiteTrace",
    "TraceResult",
    "WeightEntry",
    "WriterLinear",
    "find_writer_linear",
    "trace",
    "zeroed_entries",
]
