"""`massact.rewrite.run`: apply exact rewrites to a copy of the model, save it, reload it, verify it."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch

from massact.capture.forward import walk_windows
from massact.capture.hooks import HookSet
from massact.capture.peaks import ChannelMaxima
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.progress import say
from massact.quant import QuantInputs
from massact.residual import transform
from massact.residual.layout import Layout, check_known, find_layout
from massact.residual.plan import Plan
from massact.residual.support import PROBE_TOKENS
from massact.rewrite.config import FP16_MAX, RewriteConfig
from massact.rewrite.measure import ModulePeaks
from massact.rewrite.result import RewriteResult
from massact.rewrite.save import save
from massact.rewrite.verify import logits_change, measure_model
from massact.rotations import rotation


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


def _hooked_pass(hooks: HookSet, windows: torch.Tensor, batch_size: int, progress: bool) -> HookSet:
    """`windows` [N, L] through the hooked model, `batch_size` at a time; the hooks, done."""
    with hooks:
        walk_windows(hooks.model, windows, batch_size, description="calibration", progress=progress)
    return hooks


def _peaks(model, names: list[str], windows: torch.Tensor, batch_size: int, progress: bool) -> dict[str, float]:
    return _hooked_pass(ModulePeaks(model, names), windows, batch_size, progress).peak


def auto_factor(peak: float, headroom: float) -> float:
    """The largest power of two <= 1 that brings `peak` under headroom x the float16 maximum."""
    target = headroom * FP16_MAX
    if peak <= target:
        return 1.0
    return 2.0 ** -math.ceil(math.log2(peak / target))


def _norm_maxima(model, layout: Layout, windows: torch.Tensor, batch_size: int, progress: bool) -> dict:
    readers = [s.reader for s in layout.sublayers if s.reader]
    return _hooked_pass(ChannelMaxima(model, readers, "output"), windows, batch_size, progress).maxima


def run(loaded: LoadedModel, inputs: QuantInputs, config: RewriteConfig) -> RewriteResult:
    """Rewrite a copy of `loaded.model` as `config` says; the original stays bit-for-bit as it was.

    In memory the rewrite is made on a copy of the model and saved with `save_pretrained`; block by block
    the model is only read: the rewrite is a `Plan` of tensor edits, active in the passes that measure the
    partly rewritten model and applied to each block as it is written (`rewrite.save`). The rewritten model
    is then loaded from its folder the same way (plain `from_pretrained`, or block by block) and measured.
    """
    tell = say if config.progress else (lambda message: None)
    model = loaded.model
    blockwise = loaded.offload is not None
    if loaded.dtype != torch.float32:
        raise MassactError("rewrite the float32 model: load it with `dtype='float32'`")
    if loaded.tokenizer is None:
        raise MassactError("the model has no tokenizer to save beside the rewritten weights")
    if config.check_quant is not None:  # before any work: the library and its int4 kernel are there
        if blockwise:
            raise MassactError(
                "`check_quant` is not available under block execution (`offload='blocks'`): it quantizes whole "
                "copies of the model in memory; load the model with `offload='none'`, or leave `check_quant` out"
            )
        from massact.rewrite.realquant import cost, load_int4_kernel

        tell(cost(loaded, inputs))
        load_int4_kernel(loaded.device, tell)
    work = model if blockwise else copy.deepcopy(model)
    layout = find_layout(work, inputs.calibration[:1, :PROBE_TOKENS], config.blocks_path)
    check_known(layout, "rewrite")
    plan = Plan(work)
    steps: list[dict] = []
    if config.rotate:
        tell("rotating the residual stream ...")
        matrix, kind = rotation(layout.hidden, config.seed)
        steps.append(
            {"kind": "rotate", "seed": config.seed, "matrix": kind, "changed": transform.rotate(plan, layout, matrix)}
        )
    if config.smooth is not None:
        tell(f"smoothing on {inputs.calibration.shape[0]} calibration windows ...")
        with plan.active():
            maxima = _norm_maxima(work, layout, inputs.calibration, config.batch_size, config.progress)
        steps.append(
            {"kind": "smooth", "alpha": config.smooth, "changed": transform.smooth(plan, layout, maxima, config.smooth)}
        )
    if config.rescale is not None:
        structure = find_structure(work, config.blocks_path)
        blocks = [structure.block_path(i) for i in range(len(structure))]
        with plan.active():
            names = scaled_modules(layout, blocks)
            peaks = _peaks(work, names, inputs.calibration, config.batch_size, config.progress)
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
                "changed": transform.rescale(plan, layout, factor),
            }
        )
    folder = tempfile.TemporaryDirectory(prefix="massact-rewrite-")
    tell("saving and reloading the rewritten model ...")
    save(plan, Path(folder.name))
    loaded.tokenizer.save_pretrained(folder.name)
    del work, plan, layout
    rewritten = _reload(Path(folder.name), loaded)
    try:
        tell(f"verifying on {inputs.windows.shape[0]} held-out windows ...")
        sizes = (inputs.windows, inputs.prefix_len, config.batch_size)
        before, original_logits = measure_model(model, *sizes, config.blocks_path)
        after, rewritten_logits = measure_model(rewritten.model, *sizes)
    finally:
        if rewritten.offload is not None:
            rewritten.offload.close()
            rewritten.offload.checkpoint.close()
        del rewritten  # the int8 check loads the copies it needs from the folder, one at a time
    change = logits_change(original_logits, rewritten_logits) | {"windows": original_logits.shape[0]}
    del original_logits, rewritten_logits
    if not change["max_rel_diff"] <= config.tolerance:
        raise MassactError(
            f"the rewrite is not exact on this model: its float32 logits moved by {change['max_rel_diff']:.2e} "
            f"of their largest value (more than {config.tolerance:g}); nothing was written"
        )
    quant = None
    if config.check_quant is not None:
        from massact.rewrite.realquant import compare

        quant = compare(loaded, Path(folder.name), inputs, config.batch_size, tell)
    return RewriteResult(
        model=loaded.description,
        **inputs.describe(),
        steps=steps,
        logits=change,
        before=before,
        after=after,
        quant=quant,
        folder=folder,
        execution=loaded.execution(),
    )


def _reload(path: Path, loaded: LoadedModel) -> LoadedModel:
    """The saved folder loaded the way any user loads it: plain `from_pretrained`, no massact code; block by
    block, through massact's block loader (`from_pretrained` on the meta device) with the original's budget."""
    if loaded.offload is not None:
        from massact.models.loading import load_model

        device, budget = str(loaded.device), loaded.offload.budget
        return load_model(
            str(path), tokenizer=loaded.tokenizer, dtype="float32", device=device, offload="blocks", max_memory=budget
        )
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(loaded.device).eval()
    return LoadedModel(model=model, tokenizer=loaded.tokenizer)
