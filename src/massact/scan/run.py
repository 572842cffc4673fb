"""`run`: one forward pass, every block summarised, massive activations located."""

from __future__ import annotations

import torch

from massact.capture.forward import run_forward
from massact.capture.stats import capture_block_stats
from massact.defaults import DEFAULT_PROMPT
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.scan.config import ScanConfig
from massact.scan.result import ScanResult, find_massive, summarize_massive
from massact.tokens import TextInput, ids_input, tokenize_prompt


def run(loaded: LoadedModel, inputs: str | torch.Tensor | TextInput, config: ScanConfig | None = None) -> ScanResult:
    """Run `inputs` (a prompt, token ids [1, tokens] or a `TextInput`) through the model once; report every block.

    `config.keep` keeps that block's output; `config.keep_peak` keeps the output of the block where the
    largest massive activation peaks (found by a second, hooked pass) for the 3D figure; without a
    massive activation, the block of the largest top-1 / median ratio.
    """
    config = config or ScanConfig()
    structure = find_structure(loaded.model, config.blocks_path)
    if config.keep is not None and not 0 <= config.keep < len(structure):
        raise MassactError(f"`keep={config.keep}` is out of range; the model has blocks 0..{len(structure) - 1}")
    if isinstance(inputs, str):
        text, prompt = tokenize_prompt(loaded, inputs, config.add_special_tokens), inputs
    elif isinstance(inputs, TextInput):
        text, prompt = inputs, None
    else:
        text, prompt = ids_input(loaded, inputs), None
    thresholds = config.thresholds
    keep_set = () if config.keep is None else (config.keep,)
    with capture_block_stats(loaded.model, structure, top_k=config.top_k, thresholds=thresholds, keep=keep_set) as c:
        run_forward(loaded.model, text.input_ids)
        (record,) = c.pop()
    extra = int(record.blocks[0].positions.numel()) - len(text.tokens)
    if extra > 0:  # the model prepends learned tokens of its own (e.g. a sink token) at positions 0..extra-1
        text = TextInput(text.input_ids, ["<extra>"] * extra + text.tokens, [True] * extra + text.special)
    kinds = text.kinds
    massive = find_massive(record.blocks, text.tokens, kinds)
    summary = summarize_massive(massive, text.tokens, kinds, thresholds)
    kept = dict(record.kept)
    if config.keep_peak and config.keep is None:
        ratios = [
            abs(float(r.top_values[0])) / r.median if r.median > 0 and not r.all_nonfinite else 0.0
            for r in record.blocks
        ]
        sites = summary["sites"]  # the largest peak first
        target = sites[0]["peak_block"] if sites else max(range(len(ratios)), key=ratios.__getitem__)
        with capture_block_stats(loaded.model, structure, top_k=1, thresholds=thresholds, keep=(target,)) as c:
            run_forward(loaded.model, text.input_ids)
            kept = c.pop()[0].kept
    return ScanResult(
        model=loaded.name,
        structure=structure,
        hidden_size=int(record.blocks[0].dim_max.numel()),
        tokens=text.tokens,
        kinds=kinds,
        thresholds=thresholds,
        records=record.blocks,
        massive=massive,
        summary=summary,
        kept=kept,
        prompt=prompt,
        dtype=str(loaded.dtype).removeprefix("torch."),
        source=getattr(loaded, "source", None),
        quantization=getattr(loaded, "quantization", None),
        execution=loaded.execution(),
    )


def scan(loaded: LoadedModel, prompt: str = DEFAULT_PROMPT, config: ScanConfig | None = None) -> ScanResult:
    """The short form of `run` for a text: `massact.scan(loaded, "Summer is warm.")`."""
    return run(loaded, prompt, config)
