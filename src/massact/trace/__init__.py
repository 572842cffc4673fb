"""Trace massive activations to the weights that write them, and verify by editing those weights.

`run(loaded, prompt_or_inputs, TraceConfig(...)) -> TraceResult`: for each main massive site, the block whose
update makes it, the sub-layer (and, in a mixture-of-experts MLP, the routed expert) that writes it,
and the weight entries of its down-projection that explain the jump; then zero those entries, measure
the site and the perplexity, and restore them bit for bit.
"""

from massact.trace.config import TraceConfig
from massact.trace.edit import zeroed_entries
from massact.trace.inputs import TraceInputs
from massact.trace.linear import ExpertMatrix, WriterLinear, find_writer_linear
from massact.trace.pipeline import run
from massact.trace.result import TraceResult
from massact.trace.writer import SiteTrace, WeightEntry

__all__ = [
    "ExpertMatrix",
    "SiteTrace",
    "TraceConfig",
    "TraceInputs",
    "TraceResult",
    "WeightEntry",
    "WriterLinear",
    "find_writer_linear",
    "run",
    "zeroed_entries",
]
