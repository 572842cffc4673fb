"""W8A8 with a real int8 library (optimum-quanto), beside massact's own simulation of the same scheme.

optimum-quanto quantizes every Linear but the LM head: weights to int8 with one scale per output
channel, inputs to int8 with one static per-tensor scale learned on calibration windows (absmax per
batch, averaged with momentum 0.9), outputs too where the next operation takes int8. massact's
simulation of the nearest scheme is `W8A8-static` (per-channel int8 weights, one static per-tensor
input scale from the calibration maximum), strategy `none`.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from massact.errors import MassactError
from massact.interventions.perplexity import evaluate_perplexity
from massact.models.loading import LoadedModel
from massact.quant import QuantConfig, QuantInputs
from massact.quant import run as simulate

LIBRARY = "optimum-quanto"
SIMULATED = "W8A8-static"


def _quanto():
    try:
        import optimum.quanto as quanto
    except ImportError:
        raise MassactError("--check-quant needs optimum-quanto: pip install 'massact[quant]'") from None
    return quanto


def quanto_w8a8(model: nn.Module, calibration: torch.Tensor, batch_size: int) -> nn.Module:
    """A copy of `model` quantized by optimum-quanto: int8 weights and int8 activations, calibrated."""
    quanto = _quanto()
    quantized = copy.deepcopy(model)
    head = next((n for n, m in quantized.named_modules() if m is quantized.get_output_embeddings()), None)
    quanto.quantize(quantized, weights=quanto.qint8, activations=quanto.qint8, exclude=[head] if head else None)
    with torch.inference_mode(), quanto.Calibration():
        for start in range(0, calibration.shape[0], batch_size):
            quantized(input_ids=calibration[start : start + batch_size].to(next(model.parameters()).device))
    quanto.freeze(quantized)
    return quantized


def _real(model: nn.Module, inputs: QuantInputs, batch_size: int) -> float:
    quantized = quanto_w8a8(model, inputs.calibration, batch_size)
    return evaluate_perplexity(
        quantized, inputs.windows, batch_size, progress=False, prefix_len=inputs.prefix_len
    ).perplexity


def _simulated(loaded: LoadedModel, inputs: QuantInputs, batch_size: int) -> float:
    config = QuantConfig(
        schemes=(SIMULATED,), strategies=("none",), sensitivity=None, batch_size=batch_size, progress=False
    )
    return simulate(loaded, inputs, config).rows[0]["perplexity"]


def compare(loaded: LoadedModel, rewritten: nn.Module, inputs: QuantInputs, batch_size: int) -> dict:
    """Real and simulated W8A8 perplexity of the original and the rewritten model."""
    _quanto()
    other = replace(loaded, model=rewritten)
    real = {"original": _real(loaded.model, inputs, batch_size), "rewritten": _real(rewritten, inputs, batch_size)}
    sim = {"original": _simulated(loaded, inputs, batch_size), "rewritten": _simulated(other, inputs, batch_size)}
    helps = real["rewritten"] < real["original"]
    gaps = {k: abs(sim[k] / real[k] - 1) for k in real}
    note = (
        f"W8A8 with {LIBRARY}: the rewrite {'helps' if helps else 'does not help'} "
        f"(perplexity {real['original']:.2f} -> {real['rewritten']:.2f}); massact's {SIMULATED} simulation differs "
        f"from the library by {gaps['original']:.1%} (original) and {gaps['rewritten']:.1%} (rewritten)"
    )
    return {
        "library": LIBRARY,
        "simulated_scheme": SIMULATED,
        "real": real,
        "simulated": sim,
        "rewrite_helps": helps,
        "simulation_gap": gaps,
        "rows": [
            {"what": f"W8A8 perplexity, {LIBRARY}", **real},
            {"what": f"{SIMULATED} perplexity, massact simulation", **sim},
        ],
        "note": note,
    }
