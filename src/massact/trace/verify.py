"""Check a trace by intervention: zero the reported weight entries, measure, restore, measure again.

States measured: `original`; `zeroed` (the entries that explain the target share of each site's jump);
`control` (the same number of random entries of the same matrices, seeded); `restored` (after the
edit is undone). Each state records the traced sites' values on the prompt and, when corpus windows
are given, the perplexity on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from massact.capture.hooks import forward_hooks, output_tensor
from massact.capture.stats import capture_block_stats
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.trace.analysis import TraceResult
from massact.trace.edit import EntryKey, zeroed_entries

PerplexityFn = Callable[..., object]


def reported_entries(result: TraceResult) -> list[EntryKey]:
    """Per site, the fewest top entries that reach the target share of the jump (at least one)."""
    keys: list[EntryKey] = []
    for site in result.sites:
        count = site.entries_needed.get("of_jump") or 1
        keys.extend((e.parameter, tuple(e.stored_index)) for e in site.entries[:count])
    return list(dict.fromkeys(keys))


def control_entries(model: nn.Module, chosen: list[EntryKey], seed: int = 0) -> list[EntryKey]:
    """As many random entries as `chosen`, from the same parameters, none of them in `chosen`."""
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    taken = set(chosen)
    picked: list[EntryKey] = []
    for name, _ in chosen:
        shape = tuple(params[name].shape)
        while True:
            flat = int(torch.randint(math.prod(shape), (1,), generator=generator))
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape))
            if (name, index) not in taken:
                taken.add((name, index))
                picked.append((name, index))
                break
    return picked


def _measure_sites(loaded: LoadedModel, result: TraceResult, blocks_path: str | None) -> dict:
    """The traced sites' values at every block, and which of them the criterion still flags."""
    model = loaded.model
    structure = find_structure(model, blocks_path)
    ids = torch.tensor([result.input_ids])
    outputs: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            x = output_tensor(output)
            outputs[i] = (x[0] if x.dim() == 3 else x).detach().float().cpu()

        return hook

    device = loaded.device
    with (
        capture_block_stats(model, structure, top_k=1, thresholds=result.thresholds) as stats,
        forward_hooks([(block, keep(i)) for i, block in enumerate(structure.blocks)]),
        torch.no_grad(),
    ):
        model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device))
        (record,) = stats.pop()
    massive = {
        (int(t), int(d))
        for block in record.blocks
        for t, d in zip(block.massive_tokens.tolist(), block.massive_dims.tolist(), strict=True)
    }
    sites = []
    for site in result.sites:
        values = [float(outputs[i][site.token, site.dim]) for i in range(len(structure))]
        sites.append(
            {
                "token": site.token,
                "dim": site.dim,
                "value_at_peak_block": values[site.peak_block],
                "max_abs": max(abs(v) for v in values),
                "massive": (site.token, site.dim) in massive,
            }
        )
    return {"sites": sites, "num_massive": int(sum(b.massive_values.numel() for b in record.blocks))}


def _perplexity_fn() -> PerplexityFn | None:
    try:
        from massact.interventions.perplexity import evaluate_perplexity
    except ImportError:
        return None
    return evaluate_perplexity


def verify_trace(
    loaded: LoadedModel,
    result: TraceResult,
    *,
    windows: torch.Tensor | None = None,
    batch_size: int = 8,
    seed: int = 0,
    blocks_path: str | None = None,
    progress: bool = True,
    on_original: Callable[[], object] | None = None,
) -> dict:
    """Zero the reported entries (and, as a control, as many random ones), measure, restore, measure.

    `on_original` is a context-manager factory entered around the original perplexity run (used to
    collect the quantization-risk table from the same forward passes).
    """
    if not result.sites:
        return {"entries": [], "states": {}, "note": "no massive sites, nothing to verify"}
    model = loaded.model
    chosen = reported_entries(result)
    control = control_entries(model, chosen, seed)
    params = dict(model.named_parameters())
    before = {name: params[name].detach().clone() for name in {name for name, _ in chosen + control}}
    evaluate = _perplexity_fn() if windows is not None else None
    note = ""
    if windows is not None and evaluate is None:
        note = "perplexity not measured: massact.interventions.perplexity is not installed"

    def state(extra=None) -> dict:
        data = _measure_sites(loaded, result, blocks_path)
        if evaluate is not None:
            with extra() if extra is not None else nullcontext():
                ppl = evaluate(model, windows, batch_size=batch_size, progress=progress)
            data["perplexity"] = float(ppl.perplexity)
            data["nll"] = float(ppl.nll)
            data["tokens"] = int(ppl.tokens)
        return data

    states = {"original": state(on_original)}
    with zeroed_entries(model, chosen):
        states["zeroed"] = state()
    with zeroed_entries(model, control):
        states["control"] = state()
    states["restored"] = state()
    exact = all(torch.equal(params[name], value) for name, value in before.items())
    if not exact:  # pragma: no cover - zeroed_entries guarantees this; checked, never assumed
        raise MassactError("the model weights differ after restoring them; this is a bug, please report it")
    return {
        "entries": [{"parameter": name, "index": list(index)} for name, index in chosen],
        "control_entries": [{"parameter": name, "index": list(index)} for name, index in control],
        "control_seed": seed,
        "restored_exact": exact,
        "windows": None if windows is None else list(windows.shape),
        "states": states,
        "note": note,
    }
