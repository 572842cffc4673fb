"""W8A8 and W4 with a real int8/int4 library (optimum-quanto), beside massact's simulation of each scheme.

optimum-quanto quantizes every Linear but the LM head. W8A8: weights to int8 with one scale per
output channel, inputs to int8 with one static per-tensor scale learned on the calibration windows
(absmax per batch, averaged with momentum 0.9 over batches), and a Linear's output too where the
operation that takes it accepts int8. W4: weights only, int4 with a scale and a zero point per group of
up to 128 input channels (96 where 128 does not divide the row). massact simulates the nearest schemes:
`W8A8-static` (int8 per output channel; inputs with one static per-tensor scale, the calibration
maximum; outputs kept in full precision) and `W4g128` (symmetric int4, no zero point, groups of 128).
"""

from __future__ import annotations

import copy
import os
import sysconfig
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from massact.errors import MassactError, install_hint
from massact.models.loading import LoadedModel
from massact.perplexity import evaluate_perplexity
from massact.quant import QuantConfig, QuantInputs
from massact.quant import run as simulate

LIBRARY = "optimum-quanto"
SCHEMES = (("W8A8", "qint8", "qint8", "W8A8-static"), ("W4", "qint4", None, "W4g128"))  # name, weights, acts, sim


def _quanto():
    try:
        import optimum.quanto as quanto
    except ImportError:
        raise MassactError(f"--check-quant needs optimum-quanto: run `{install_hint('quant')}`") from None
    return quanto


def quanto_model(model: nn.Module, weights: str, activations: str | None, calibration: torch.Tensor, batch_size: int):
    """A copy of `model` quantized by optimum-quanto (LM head excluded), calibrated when activations are."""
    quanto = _quanto()
    quantized = copy.deepcopy(model)
    head = next((n for n, m in quantized.named_modules() if m is quantized.get_output_embeddings()), None)
    acts = getattr(quanto, activations) if activations else None
    quanto.quantize(quantized, weights=getattr(quanto, weights), activations=acts, exclude=[head] if head else None)
    if acts is not None:
        with torch.inference_mode(), quanto.Calibration():
            for start in range(0, calibration.shape[0], batch_size):
                quantized(input_ids=calibration[start : start + batch_size].to(next(model.parameters()).device))
    quanto.freeze(quantized)
    return quantized


@torch.no_grad()
def _dequantized(model: nn.Module, quantized: nn.Module) -> nn.Module:
    """`model` with the library's quantized weights, dequantized (quanto's int4 tensors refuse inference mode)."""
    quanto = _quanto()
    plain = copy.deepcopy(model)
    for name, module in quantized.named_modules():
        if isinstance(module, quanto.QModuleMixin):
            target = plain.get_submodule(name).weight
            target.copy_(module.weight.dequantize().to(target.dtype))
    return plain


@contextmanager
def _scripts_first() -> Iterator[None]:
    """PATH with this environment's scripts folder first, while torch builds or loads the kernel.

    torch builds it with the first `ninja` on PATH and rebuilds it whenever another ninja finds it (each
    hashes the command its own way): this way it is always the one installed beside optimum-quanto,
    whether massact runs from an activated environment or not.
    """
    before = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(p for p in (sysconfig.get_path("scripts"), before) if p)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = before


def _unpack_probe(device: torch.device) -> None:
    """Unpack one int4 byte with the library's own kernel (built, then loaded, on first use)."""
    torch.ops.quanto.unpack(torch.zeros(1, dtype=torch.uint8, device=device), 4)


def load_int4_kernel(device: torch.device, tell: Callable[[str], None]) -> None:
    """Load optimum-quanto's int4 kernel (the library compiles it the first time); one clear error if it cannot."""
    _quanto()
    tell(f"loading {LIBRARY}'s int4 kernel (the first time, the library compiles it: up to a minute or two) ...")
    try:
        with _scripts_first():
            _unpack_probe(device)
    except RuntimeError as err:  # torch's extension build: no ninja, no compiler, or the compile failed
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MassactError(
            f"{LIBRARY} could not build its int4 kernel ({reason}); the W4 check needs a C++ compiler "
            "(apt-get install g++, or Xcode's command line tools) and ninja (pip install ninja)"
        ) from None


def _real(model: nn.Module, scheme: tuple, inputs: QuantInputs, batch_size: int) -> float:
    quantized = quanto_model(model, scheme[1], scheme[2], inputs.calibration, batch_size)
    if scheme[2] is None:  # weights only: the same products on the dequantized weights
        quantized = _dequantized(model, quantized)
    windows = inputs.windows
    return evaluate_perplexity(quantized, windows, batch_size, progress=False, prefix_len=inputs.prefix_len).perplexity


def _simulated(loaded: LoadedModel, inputs: QuantInputs, batch_size: int) -> dict[str, float]:
    sims = tuple(s[3] for s in SCHEMES)
    config = QuantConfig(schemes=sims, strategies=("none",), sensitivity=None, batch_size=batch_size, progress=False)
    return {row["scheme"]: row["perplexity"] for row in simulate(loaded, inputs, config).rows}


def compare(
    loaded: LoadedModel,
    rewritten: nn.Module,
    inputs: QuantInputs,
    batch_size: int,
    tell: Callable[[str], None] = lambda message: None,
) -> dict:
    """Real and simulated W8A8 and W4 perplexity of the original and the rewritten model."""
    _quanto()
    models = {"original": loaded, "rewritten": replace(loaded, model=rewritten)}
    tell(f"simulating {' and '.join(s[3] for s in SCHEMES)} on both models ...")
    sims = {side: _simulated(m, inputs, batch_size) for side, m in models.items()}
    rows, notes, schemes = [], [], {}
    for scheme in SCHEMES:
        tell(f"{scheme[0]} with {LIBRARY} on both models ...")
        real = {side: _real(m.model, scheme, inputs, batch_size) for side, m in models.items()}
        sim = {side: sims[side][scheme[3]] for side in models}
        gap = {side: abs(sim[side] / real[side] - 1) for side in models}
        helps = real["rewritten"] < real["original"]
        schemes[scheme[0]] = {"real": real, "simulated": sim, "simulated_scheme": scheme[3], "rewrite_helps": helps}
        schemes[scheme[0]]["simulation_gap"] = gap
        rows.append({"what": f"{scheme[0]} perplexity, {LIBRARY}", **real})
        rows.append({"what": f"{scheme[3]} perplexity, massact simulation", **sim})
        notes.append(
            f"{scheme[0]} with {LIBRARY}: the rewrite {'helps' if helps else 'does not help'} (perplexity "
            f"{real['original']:.2f} before, {real['rewritten']:.2f} after); massact's {scheme[3]} simulation differs "
            f"from the library by {gap['original']:.1%} (original) and {gap['rewritten']:.1%} (rewritten)"
        )
    return {"library": LIBRARY, "schemes": schemes, "rows": rows, "notes": notes}
