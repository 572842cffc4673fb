"""Check a trace by intervention: zero the reported weight entries, measure, restore, measure again.

States measured: `original`; `zeroed` (the entries that explain the target share of each site's jump);
`control` (the same number of random entries of the same parameters, seeded); `restored` (after the
edit is undone). Each state records the traced sites' values on the prompt and, when corpus windows
are given, the perplexity on their text tokens. Entries of fused expert parameters ([expert, row, col])
are edited the same way as any other entry. A model that runs block by block gets the edit as each block
is read from its checkpoint; `restored_exact` compares the weights read before the edits and after them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from massact.capture.forward import run_forward
from massact.capture.hooks import HookFn, HookSet, output_tensor
from massact.capture.stats import capture_block_stats
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.offload import materialized
from massact.models.structure import Structure
from massact.perplexity import evaluate_perplexity
from massact.trace.edit import EntryKey, zeroed_entries
from massact.trace.writer import SiteTrace


def reported_entries(sites: list[SiteTrace]) -> list[EntryKey]:
    """Per site, the fewest top entries that reach the target share of the jump (at least one)."""
    keys: list[EntryKey] = []
    for site in sites:
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


class SiteValues(HookSet):
    """Every block's output at the traced sites' tokens and dims (kept on the device during the pass)."""

    per_forward = ("values",)  # one pass's values, read back after it

    def __init__(self, model: nn.Module, structure: Structure, sites: list[tuple[int, int]]) -> None:
        super().__init__(model)
        self.structure = structure
        self.tokens = torch.tensor([t for t, _ in sites], dtype=torch.long)
        self.dims = torch.tensor([d for _, d in sites], dtype=torch.long)
        self.values: dict[int, torch.Tensor] = {}
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _keep(self, index: int) -> HookFn:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            x = output_tensor(output).detach()
            x = x[0] if x.dim() == 3 else x
            if x.device not in self._on_device:  # copied to the device once, not once per block
                self._on_device[x.device] = (self.tokens.to(x.device), self.dims.to(x.device))
            tokens, dims = self._on_device[x.device]
            self.values[index] = x[tokens, dims].float()

        return hook

    def forward_hooks(self) -> Iterable[tuple[nn.Module, HookFn]]:
        return [(block, self._keep(i)) for i, block in enumerate(self.structure.blocks)]


def measure_sites(
    loaded: LoadedModel, structure: Structure, input_ids: torch.Tensor, sites: list[SiteTrace], thresholds
) -> dict:
    """The traced sites' values at every block, and which of them the criterion still flags."""
    model = loaded.model
    pairs = [(s.token, s.dim) for s in sites]
    with (
        capture_block_stats(model, structure, top_k=1, thresholds=thresholds) as stats,
        SiteValues(model, structure, pairs) as values,
    ):
        run_forward(model, input_ids)
        (record,) = stats.pop()
        per_block = torch.stack([values.values[i].cpu() for i in range(len(structure))])  # [blocks, sites]
    massive = {
        (int(t), int(d))
        for block in record.blocks
        for t, d in zip(block.massive_tokens.tolist(), block.massive_dims.tolist(), strict=True)
    }
    rows = []
    for column, site in enumerate(sites):
        trajectory = per_block[:, column].tolist()
        rows.append(
            {
                "token": site.token,
                "dim": site.dim,
                "value_at_peak_block": trajectory[site.peak_block],
                "max_abs": max(abs(v) for v in trajectory),
                "massive": (site.token, site.dim) in massive,
            }
        )
    return {"sites": rows, "num_massive": int(sum(b.massive_values.numel() for b in record.blocks))}


def _owners(model: nn.Module, names: list[str]) -> list[nn.Module]:
    return [model.get_submodule(name.rpartition(".")[0]) for name in names]


def _weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """A copy of each named parameter as the model holds it now (block by block: as read, with any edits)."""
    params = dict(model.named_parameters())
    with materialized(model, _owners(model, names)):
        return {name: params[name].detach().clone() for name in names}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Whether each named parameter equals its copy in `before`, bit for bit (block by block: as read)."""
    params = dict(model.named_parameters())
    with materialized(model, _owners(model, list(before))):
        return all(torch.equal(params[name], value) for name, value in before.items())


def verify_trace(
    loaded: LoadedModel,
    structure: Structure,
    input_ids: torch.Tensor,
    sites: list[SiteTrace],
    thresholds,
    *,
    windows: torch.Tensor | None = None,
    prefix_len: int = 0,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    on_original: Callable[[], AbstractContextManager] | None = None,
) -> dict:
    """Zero the reported entries (and, as a control, as many random ones), measure, restore, measure.

    `on_original` is a context-manager factory entered around the original perplexity run (used to
    collect the quantization-risk table from the same forward passes).
    """
    if not sites:
        return {"entries": [], "states": {}, "note": "no massive sites, nothing to verify"}
    model = loaded.model
    chosen = reported_entries(sites)
    control = control_entries(model, chosen, seed)
    edited = sorted({name for name, _ in chosen + control})
    before = _weights(model, edited)

    def state(extra: Callable[[], AbstractContextManager] | None = None) -> dict:
        data = measure_sites(loaded, structure, input_ids, sites, thresholds)
        if windows is not None:
            with extra() if extra is not None else nullcontext():
                ppl = evaluate_perplexity(
                    model, windows, batch_size=batch_size, progress=progress, prefix_len=prefix_len
                )
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
    exact = _unchanged(model, before)
    if not exact:  # pragma: no cover - zeroed_entries guarantees this; checked, never assumed
        raise MassactError("the model weights differ after restoring them; this is a bug, please report it")
    return {
        "entries": [{"parameter": name, "index": list(index)} for name, index in chosen],
        "control_entries": [{"parameter": name, "index": list(index)} for name, index in control],
        "control_seed": seed,
        "restored_exact": exact,
        "windows": None if windows is None else list(windows.shape),
        "states": states,
    }
