"""`massact.rewrite.run`: apply exact rewrites to a copy of the model, save it, reload it, verify it."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch

from massact.capture.forward import run_forward
from massact.capture.hooks import HookSet
from massact.capture.peaks import ChannelMaxima
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.progress import say
from massact.quant import QuantInputs
from massact.rewrite import transform
from massact.rewrite.config import FP16_MAX, RewriteConfig
from massact.rewrite.hadamard import rotation
from massact.rewrite.layout import Layout, check_known, find_layout
from massact.rewrite.measure import ModulePeaks
from massact.rewrite.result import RewriteResult
from massact.rewrite.verify import logits_change, measure_model

PROBE_TOKENS = 32


def _module(path: str) -> str:
    return path.rpartition(".")[0]


def scaled_modules(layout: Layout, blocks: list[str]) -> list[str]:
    """Modules whose outputs (or inputs) a rescale multiplies: blocks, sub-layers, post-norms, writers."""
    names = list(blocks) + [_module(s.path) for s in layout.embeddings]
    for sub in layout.sublayers:
        names.append(sub.path)
        names += [sub.post_norm] if sub.post_norm else []
        names += [_module(s.path) for s in sub.writers + sub.scaled]
    return list(dict.fromkeys(names))


def _hooked_pass(hooks: HookSet, windows: torch.Tensor, batch_size: int) -> HookSet:
    """`windows` [N, L] through the hooked model, `batch_size` at a time; the hooks, done."""
    with hooks:
        for start in range(0, windows.shape[0], batch_size):
            run_forward(hooks.model, windows[start : start + batch_size])
    return hooks


def _peaks(model, names: list[str], windows: torch.Tensor, batch_size: int) -> dict[str, float]:
    return _hooked_pass(ModulePeaks(model, names), windows, batch_size).peak


def auto_factor(peak: float, headroom: float) -> float:
    """The largest power of two <= 1 that brings `peak` under headroom x the float16 maximum."""
    target = headroom * FP16_MAX
    if peak <= target:
        return 1.0
    return 2.0 ** -math.ceil(math.log2(peak / target))


def _norm_maxima(model, layout: Layout, windows: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    readers = [s.reader for s in layout.sublayers if s.reader]
    return _hooked_pass(ChannelMaxima(model, readers, "output"), windows, batch_size).maxima


def run(loaded: LoadedModel, inputs: QuantInputs, config: RewriteConfig) -> RewriteResult:
    """Rewrite a copy of `loaded.model` as `config` says; the original stays bit-for-bit as it was."""
    tell = say if config.progress else (lambda message: None)
    model = loaded.model
    if next(model.parameters()).dtype != torch.float32:
        raise MassactError("rewrite the float32 model: load it with --dtype float32")
    if loaded.tokenizer is None:
        raise MassactError("the model has no tokenizer to save beside the rewritten weights")
    if config.check_quant is not None:  # before any work: the library and its int4 kernel are there
        from massact.rewrite.realquant import load_int4_kernel

        load_int4_kernel(next(model.parameters()).device, tell)
    work = copy.deepcopy(model)
    layout = find_layout(work, inputs.calibration[:1, :PROBE_TOKENS], config.blocks_path)
    check_known(layout, "rewrite")
    steps: list[dict] = []
    if config.rotate:
        tell("rotating the residual stream ...")
        matrix, kind = rotation(layout.hidden, config.seed)
        steps.append(
            {"kind": "rotate", "seed": config.seed, "matrix": kind, "changed": transform.rotate(work, layout, matrix)}
        )
    if config.smooth is not None:
        tell(f"smoothing on {inputs.calibration.shape[0]} calibration windows ...")
        maxima = _norm_maxima(work, layout, inputs.calibration, config.batch_size)
        steps.append(
            {"kind": "smooth", "alpha": config.smooth, "changed": transform.smooth(layout, maxima, config.smooth)}
        )
    if config.rescale is not None:
        structure = find_structure(work, config.blocks_path)
        blocks = [structure.block_path(i) for i in range(len(structure))]
        peaks = _peaks(work, scaled_modules(layout, blocks), inputs.calibration, config.batch_size)
        peak_name = max(peaks, key=peaks.get)
        factor = auto_factor(peaks[peak_name], config.headroom) if config.rescale == "auto" else float(config.rescale)
        steps.append(
            {
                "kind": "rescale",
                "auto": config.rescale == "auto",
                "headroom": config.headroom,
                "factor": factor,
                "calibration_peak": peaks[peak_name],
                "calibration_peak_module": peak_name,
                "changed": transform.rescale(work, layout, factor),
            }
        )
    folder = tempfile.TemporaryDirectory(prefix="massact-rewrite-")
    tell("saving and reloading the rewritten model ...")
    work.save_pretrained(folder.name)
    loaded.tokenizer.save_pretrained(folder.name)
    del work
    rewritten = _reload(Path(folder.name), model.device)
    tell(f"verifying on {inputs.windows.shape[0]} held-out windows ...")
    sizes = (inputs.windows, inputs.prefix_len, config.batch_size)
    before, original_logits = measure_model(model, *sizes, config.blocks_path)
    after, rewritten_logits = measure_model(rewritten, *sizes)
    change = logits_change(original_logits, rewritten_logits) | {"windows": original_logits.shape[0]}
    if not change["max_rel_diff"] <= config.tolerance:
        raise MassactError(
            f"the rewrite is not exact on this model: its float32 logits moved by {change['max_rel_diff']:.2e} "
            f"of their largest value (more than {config.tolerance:g}); nothing was written"
        )
    quant = None
    if config.check_quant is not None:
        from massact.rewrite.realquant import compare

        quant = compare(loaded, rewritten, inputs, config.batch_size, tell)
    return RewriteResult(
        model=loaded.description,
        **inputs.describe(),
        steps=steps,
        logits=change,
        before=before,
        after=after,
        quant=quant,
        folder=folder,
    )


def _reload(path: Path, device: torch.device):
    """The saved folder loaded the way any user loads it: plain `from_pretrained`, no massact code."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
