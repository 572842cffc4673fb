"""An llm-compressor recipe from what the model measured: which layer norm feeds which Linears (the
SmoothQuant mappings, found by one hooked forward pass, no layer names assumed) and which Linears to keep
in higher precision (those whose input reaches a massive |x|, and the output head).

The recipe is llm-compressor's YAML (`oneshot(model=..., recipe="recipe.yaml", dataset=...)`): one stage
with a `SmoothQuantModifier` (`smoothing_strength`, `mappings` of [[balance layers], smooth layer]) and a
`GPTQModifier` (`targets`, `scheme`, `ignore`).
"""

from __future__ import annotations

import re
from contextlib import ExitStack

import torch
from torch import nn

from massact.capture.forward import run_forward
from massact.capture.hooks import forward_hooks, forward_pre_hook
from massact.models.structure import Structure, is_linear

SCHEME = "W8A8"


def _relative(name: str, structure: Structure) -> str:
    """`model.layers.11.mlp.up_proj` -> `mlp.up_proj` (the name inside its block)."""
    prefix = f"{structure.blocks_path}." if structure.blocks_path else ""
    rest = name[len(prefix) :] if name.startswith(prefix) else name
    return rest.split(".", 1)[1] if "." in rest else rest


def smoothing_mappings(model: nn.Module, structure: Structure, input_ids: torch.Tensor) -> list[list]:
    """[[balance Linears], smoothing module] pairs: a module with a per-channel `weight` (a layer norm)
    whose output tensor is itself the input of those Linears, as llm-compressor regexes (`re:.*NAME$`)
    named inside the block, the same for every block that has them."""
    blocks = {f"{structure.block_path(i)}." for i in range(len(structure))}
    named = [(n, m) for n, m in model.named_modules() if any(n.startswith(b) for b in blocks)]
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors stay referenced, so no id is reused
    inputs: dict[str, torch.Tensor] = {}

    def record_output(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (name, output)

        return hook

    def record_input(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(x, torch.Tensor):
                inputs[name] = x

        return hook

    norms = [(m, record_output(n)) for n, m in named if _is_scale_module(m)]
    with ExitStack() as stack:
        stack.enter_context(forward_hooks(norms))
        for name, module in named:
            if is_linear(module):
                stack.enter_context(forward_pre_hook(module, record_input(name)))
        run_forward(model, input_ids)
    groups: dict[str, list[str]] = {}
    for linear, x in inputs.items():
        source = outputs.get(id(x))
        if source is not None and source[1] is x:
            groups.setdefault(source[0], []).append(linear)
    pairs: dict[tuple[tuple[str, ...], str], None] = {}
    for norm, linears in groups.items():
        balance = tuple(f"re:.*{re.escape(_relative(n, structure))}$" for n in sorted(linears))
        pairs[(balance, f"re:.*{re.escape(_relative(norm, structure))}$")] = None
    return [[list(balance), smooth] for balance, smooth in pairs]


def _is_scale_module(module: nn.Module) -> bool:
    """A module whose only job is a per-channel scale SmoothQuant can fold into (LayerNorm, RMSNorm, ...)."""
    weight = getattr(module, "weight", None)
    children = next(module.children(), None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 1 and children is None and not is_linear(module)


def kept_linears(act_scales: dict[str, torch.Tensor], model: nn.Module, abs_threshold: float) -> list[str]:
    """Linears to leave unquantized: the output head, and every Linear whose input reaches |x| > `abs_threshold`
    (one int8 step of a per-tensor scale is then larger than most of its inputs)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [n for n, m in model.named_modules() if head is not None and m is head]
    names += [n for n, m in act_scales.items() if m.numel() and float(m.max()) > abs_threshold and n not in names]
    return names


def recipe(mappings: list[list], ignore: list[str], alpha: float) -> dict:
    """llm-compressor's recipe: SmoothQuant with the measured mappings, then GPTQ W8A8 with `ignore` kept."""
    return {
        "quant_stage": {
            "quant_modifiers": {
                "SmoothQuantModifier": {"smoothing_strength": alpha, "mappings": mappings},
                "GPTQModifier": {"targets": ["Linear"], "scheme": SCHEME, "ignore": ignore},
            }
        }
    }
