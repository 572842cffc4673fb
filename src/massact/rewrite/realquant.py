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
import gc
import os
import sysconfig
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from massact.capture.forward import walk_windows
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
        raise MassactError(f"`check_quant` needs optimum-quanto: run `{install_hint('quant')}`") from None
    return quanto


def quantize_in_place(
    model: nn.Module, weights: str, activations: str | None, calibration: torch.Tensor, batch_size: int
) -> nn.Module:
    """`model` itself quantized by optimum-quanto (LM head excluded), calibrated when activations are; frozen,
    so its Linears hold int8/int4 weights and the float weights are freed. Give it a copy you can spend."""
    quanto = _quanto()
    head = next((n for n, m in model.named_modules() if m is model.get_output_embeddings()), None)
    acts = getattr(quanto, activations) if activations else None
    quanto.quantize(model, weights=getattr(quanto, weights), activations=acts, exclude=[head] if head else None)
    if acts is not None:
        with torch.inference_mode(), quanto.Calibration():
            walk_windows(model, calibration, batch_size, description="calibration", progress=False)
    quanto.freeze(model)
    return model


@torch.no_grad()
def dequantize_in_place(model: nn.Module) -> nn.Module:
    """Each quantized Linear of `model` back to a plain Linear holding the library's dequantized weights, one at a
    time (quanto's int4 tensors refuse inference mode; the products are the same)."""
    quanto = _quanto()
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, quanto.QModuleMixin)]:
        if not isinstance(module, nn.Linear):
            raise MassactError(f"{LIBRARY} quantized {name}, a {type(module).__name__}: only Linears are checked")
        weight = module.weight.dequantize()
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight = nn.Parameter(weight, requires_grad=False)
        if module.bias is not None:
            plain.bias = module.bias
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, plain)
    return model


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


def _real(make: Callable[[], nn.Module], scheme: tuple, inputs: QuantInputs, batch_size: int) -> float:
    """Perplexity of a model `make` builds (one spendable copy), quantized by the library; the copy is freed."""
    quantized = quantize_in_place(make(), scheme[1], scheme[2], inputs.calibration, batch_size)
    if scheme[2] is None:  # weights only: the same products on the dequantized weights
        quantized = dequantize_in_place(quantized)
    windows = inputs.windows
    result = evaluate_perplexity(quantized, windows, batch_size, progress=False, prefix_len=inputs.prefix_len)
    del quantized
    _release()
    return result.perplexity


def _release() -> None:
    """Give a freed model copy back before the next is made."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _simulated(loaded: LoadedModel, inputs: QuantInputs, batch_size: int) -> dict[str, float]:
    sims = tuple(s[3] for s in SCHEMES)
    config = QuantConfig(schemes=sims, strategies=("none",), sensitivity=None, batch_size=batch_size, progress=False)
    return {row["scheme"]: row["perplexity"] for row in simulate(loaded, inputs, config).rows}


# Passes over the windows per model (original, rewritten). The simulation (`massact.quant.run`, one scheme row
# each, strategy none): calibration (calibration windows), unquantized perplexity (held-out), W8A8-static scales
# (calibration) and perplexity (held-out), W4g128 perplexity (held-out). The library: W8A8 calibration
# (calibration) and perplexity (held-out), W4 perplexity (held-out).
PASSES = {"held_out": 3 + 2, "calibration": 2 + 1}


def cost(loaded: LoadedModel, inputs: QuantInputs) -> str:
    """What --check-quant adds to the rewrite, in one line, said before any work."""
    held_out, calibration = 2 * PASSES["held_out"], 2 * PASSES["calibration"]
    size = sum(t.numel() * t.element_size() for t in (*loaded.model.parameters(), *loaded.model.buffers()))
    return (
        f"--check-quant w8a8 adds {held_out + calibration} passes after the rewrite ({held_out} over the "
        f"{inputs.windows.shape[0]} held-out windows, {calibration} over the {inputs.calibration.shape[0]} "
        f"calibration windows; W8A8 and W4 with {LIBRARY} and massact's simulation of each, on both models) "
        f"and one extra model copy at a time ({size / 1e9:.2g} GB in float32) beside the original"
    )


def _from_folder(folder: Path, device: torch.device) -> nn.Module:
    """The rewritten model as any user loads it: plain `from_pretrained` from its folder."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()


def _simulated_from_folder(folder: Path, loaded: LoadedModel, inputs: QuantInputs, batch_size: int) -> dict:
    """The simulation on the rewritten model read block by block from its folder (one block in memory at a time)."""
    from massact.models.loading import load_model

    blockwise = load_model(
        str(folder), tokenizer=loaded.tokenizer, dtype="float32", device=str(loaded.device), offload="blocks"
    )
    try:
        return _simulated(blockwise, inputs, batch_size)
    finally:
        blockwise.offload.close()
        blockwise.offload.checkpoint.close()
        del blockwise
        _release()


def compare(
    loaded: LoadedModel,
    folder: Path,
    inputs: QuantInputs,
    batch_size: int,
    tell: Callable[[str], None] = lambda message: None,
) -> dict:
    """Real and simulated W8A8 and W4 perplexity of the original and of the rewritten model saved in `folder`.

    Beside the original, at most one further model is in memory at a time: the simulation edits the original's
    weights in place (each edited Linear held once more while it runs) and reads the rewritten model block by
    block; each library check quantizes one fresh copy (of the original, or loaded from `folder`) in place
    and frees it before the next.
    """
    _quanto()
    folder = Path(folder)
    names = " and ".join(s[3] for s in SCHEMES)
    tell(f"simulating {names} on the original model ...")
    sims = {"original": _simulated(loaded, inputs, batch_size)}
    tell(f"simulating {names} on the rewritten model, read block by block from its folder ...")
    sims["rewritten"] = _simulated_from_folder(folder, loaded, inputs, batch_size)
    makers = {"original": lambda: copy.deepcopy(loaded.model), "rewritten": lambda: _from_folder(folder, loaded.device)}
    rows, notes, schemes = [], [], {}
    for scheme in SCHEMES:
        tell(f"{scheme[0]} with {LIBRARY} on both models, one copy at a time ...")
        real = {side: _real(make, scheme, inputs, batch_size) for side, make in makers.items()}
        sim = {side: sims[side][scheme[3]] for side in makers}
        gap = {side: abs(sim[side] / real[side] - 1) for side in makers}
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
    return {"library": LIBRARY, "batch_size": batch_size, "schemes": schemes, "rows": rows, "notes": notes}
