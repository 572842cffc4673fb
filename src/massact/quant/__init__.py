"""Quantization: exports for quantization tools, int8 risk per block, and simulated quantization.

`run(loaded, inputs, QuantConfig)` measures perplexity under each (scheme, strategy);
`quant_context(loaded, scheme, strategy, calibration)` runs any forward (perplexity, task evaluation,
generation of full sequences) under one of them.
"""

from massact.quant.calibrate import Calibration, SuperWeight, calibrate, calibration_text, super_weights_from_trace
from massact.quant.config import QuantConfig
from massact.quant.result import QuantResult
from massact.quant.run import QuantInputs, check_counts, load_inputs, run, trace_super_weights
from massact.quant.schemes import Scheme, parse_scheme
from massact.quant.simulate import quant_context
from massact.quant.strategies import parse_strategy

__all__ = [
    "Calibration",
    "QuantConfig",
    "QuantInputs",
    "QuantResult",
    "Scheme",
    "SuperWeight",
    "calibrate",
    "calibration_text",
    "check_counts",
    "load_inputs",
    "parse_scheme",
    "parse_strategy",
    "quant_context",
    "run",
    "super_weights_from_trace",
    "trace_super_weights",
]
