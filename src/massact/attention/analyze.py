"""Attention analysis of token sequences: find the massive-activation tokens, then measure every block's attention.

Two walks over the sequences (one sequence per forward pass): the first, with massact's block statistics,
finds each sequence's massive-activation tokens C (or the caller names them); the second runs the model's
eager attention through `capture_attention` and measures each block as its attention runs, keeping no
attention map except the one block shown in the heatmap (head-averaged) and any blocks asked for. With
`intervene`, each block is run once more with the C part of its attention output replaced by its mean over
queries, and once with it removed, from the block's own recorded inputs. Both walks go through
`walk_windows`, so a model that runs block by block is read once per walk, not once per sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from massact.attention import views
from massact.attention.capture import AttentionCall, capture_attention, check_capturable, check_memory, num_heads
from massact.attention.config import AttentionConfig
from massact.attention.inputs import AttentionInput, prompt_input
from massact.attention.measures import (
    BlockAttention,
    learned_sink_share,
    measure_call,
    no_softmax_record,
    replaced_output,
)
from massact.capture.forward import walk_windows
from massact.capture.hooks import HookSet, KwargsHookFn, output_tensor
from massact.capture.peaks import BlockPeaks
from massact.capture.stats import SequenceRecord, capture_block_stats
from massact.detect import Thresholds, feature_dims
from massact.errors import MassactError
from massact.html.registry import result_kind
from massact.html.views.attention import attention_charts
from massact.models.loading import LoadedModel
from massact.models.offload import offload_of
from massact.models.structure import Structure, find_structure
from massact.precision import Precision
from massact.validate import given

KIND = "attention"  # the `kind` field of the JSON: which result this is

PER_HEAD = ("first_importance", "sink", "massive_mass", "c_cosine", "c_relvar", "c_share", "rest_cosine")
PER_BLOCK = (
    "block_c_cosine",
    "block_c_relvar",
    "block_c_share",
    "block_rest_cosine",
    "decomposition_error",
    "replace_mean_change",
    "replace_zero_change",
)


@dataclass
class SequenceAttention:
    """All blocks of one sequence."""

    sinks: list[int]
    first_massive_block: int | None
    blocks: list[BlockAttention]
    maps: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> probs [heads, queries, keys]
    logit_maps: dict[int, torch.Tensor] = field(default_factory=dict)
    heatmap: torch.Tensor | None = None  # head-averaged probabilities of the heatmap block
    heatmap_logits: torch.Tensor | None = None
    logits_error: float | None = None  # max |softmax(logits) - probs| of the heatmap block
    positions: int = 0  # positions in the block outputs (input tokens plus any the model prepends)
    features: dict[int, float] = field(default_factory=dict)  # outlier features (not in C): dim -> token share
    heatmap_block: int | None = None  # the block of `heatmap`


class _Recorder:
    """Receives attention calls and block outputs of one forward pass of one sequence."""

    def __init__(self, sinks: list[int], options: AttentionConfig, heatmap_block: int) -> None:
        self.sinks = sinks
        self.options = options
        self.heatmap_block = heatmap_block
        self.keep = set(options.keep_maps)
        self.mode: str | None = None
        self.records: dict[int, BlockAttention] = {}
        self.result = SequenceAttention(sinks=sinks, first_massive_block=None, blocks=[])

    def on_call(self, call: AttentionCall) -> torch.Tensor | None:
        if self.mode is not None:
            return replaced_output(call, self.sinks, self.mode)
        if call.block in self.records:  # a second attention in the same block (e.g. cross-attention): not measured
            return None
        if self.options.block is None and self.result.heatmap is None and call.block > self.heatmap_block:
            self.heatmap_block = call.block  # the default block ran no softmax attention: the next one that does
        queries, keys = call.probs.shape[-2], call.probs.shape[-1]
        if keys < queries:
            raise MassactError(
                f"block {call.block}: attention has {queries} queries but only {keys} keys; "
                "massact measures self-attention over the whole sequence only"
            )
        record = measure_call(call, 0, self.sinks, self.options.threshold)
        record.extra["mixer"] = type(call.module).__name__
        learned = learned_sink_share(call, 0)
        if learned is not None:  # a learned sink logit per head beside the keys (GPT-OSS)
            record.extra["learned_sink_share"] = learned.cpu().tolist()
        if keys > queries:  # keys past the sequence: an explicit attention bias k' (or a fixed prefix)
            record.extra["extra_keys"] = keys - queries
            record.extra["extra_key_mass"] = call.probs[0, :, :, queries:].float().sum(-1).mean(-1).cpu().tolist()
        self.records[call.block] = record
        logits = call.logits()[0] if self.options.logits and call.block in self.keep | {self.heatmap_block} else None
        if call.block in self.keep:
            self.result.maps[call.block] = call.probs[0].float().cpu().clone()
            if logits is not None:
                self.result.logit_maps[call.block] = logits.cpu().clone()
        if call.block == self.heatmap_block:
            n = self.options.display_tokens
            self.result.heatmap = call.probs[0, :, :n, :n].float().mean(0).cpu()
            if logits is not None:
                self.result.heatmap_logits = logits[:, :n, :n].mean(0).cpu()
                rebuilt = torch.softmax(logits.nan_to_num(nan=-math.inf), dim=-1)
                self.result.logits_error = float((rebuilt - call.probs[0].float()).abs().max())
        return None

    def after_block(self, index: int, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        """Re-run block `index` on its own inputs with the C part replaced by its mean, and removed."""
        if self.mode is not None or not self.sinks or index not in self.records:
            return
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output_tensor(output)
        update = (hidden_out.float() - hidden_in.float()).norm().clamp_min(1e-30)
        changes = {}
        for mode in ("mean", "zero"):
            self.mode = mode
            try:
                changed = output_tensor(module(*args, **kwargs))
            finally:
                self.mode = None
            changes[mode] = float((changed.float() - hidden_out.float()).norm() / update)
        self.records[index].replace_mean_change = changes["mean"]
        self.records[index].replace_zero_change = changes["zero"]


class _AttentionPass(HookSet):
    """Hands each forward pass's attention calls (and, with `intervene`, block outputs) to its sequence's recorder.

    Pass n is sequence n: the model's pre-hook numbers a pass as it starts (`_current`, one pass's state).
    Block by block every sequence reaches block i before any reaches block i + 1, and the runner keeps
    `_current` per batch, so each stage still reaches the right recorder.
    """

    per_forward = ("_current",)

    def __init__(self, model: nn.Module, structure: Structure, recorders: list[_Recorder], intervene: bool) -> None:
        super().__init__(model)
        self.structure, self.recorders, self.intervene = structure, recorders, intervene
        self._current: int | None = None
        self._started = 0

    def pre_hooks(self) -> list[tuple[nn.Module, Callable]]:
        return [(self.model, self._start)]

    def kwargs_hooks(self) -> list[tuple[nn.Module, KwargsHookFn]]:
        if not self.intervene:
            return []
        return [(block, self._block_hook(i)) for i, block in enumerate(self.structure.blocks)]

    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._current is None:
            self._current, self._started = self._started, self._started + 1

    def finish(self, start: int, input_ids: torch.Tensor, output: object) -> None:
        """The end of pass `start` (a `walk_windows` consumer): the next pass is the next sequence."""
        assert self._current == start, (self._current, start)
        self._current = None

    def on_call(self, call: AttentionCall) -> torch.Tensor | None:
        return self.recorders[self._current].on_call(call)

    def _block_hook(self, index: int) -> KwargsHookFn:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            self.recorders[self._current].after_block(index, module, args, kwargs, output)

        return hook


def _forward_kwargs(model: nn.Module) -> dict:
    return {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}


@dataclass
class _Detected:
    """What the first walk finds in one sequence."""

    sinks: list[int]  # positions with massive activations in any block (outlier features left out)
    first_block: int | None  # the first block with any
    positions: int  # positions in the block outputs (more than the input ids when the model prepends its own)
    features: dict[int, float]  # outlier features: dim -> share of tokens


def _detected(record: SequenceRecord, thresholds: Thresholds) -> _Detected:
    positions = int(record.positions.numel())
    features = feature_dims((b.massive_dims for b in record.blocks), positions, thresholds)
    per_block = [
        {t for t, d in zip(b.massive_tokens.tolist(), b.massive_dims.tolist(), strict=True) if d not in features}
        for b in record.blocks
    ]
    found = [i for i, tokens in enumerate(per_block) if tokens]
    return _Detected(sorted(set().union(*per_block)), found[0] if found else None, positions, features)


def find_sinks(
    model: nn.Module, structure: Structure, input_ids: torch.Tensor, thresholds: Thresholds, progress: bool = False
) -> list[_Detected]:
    """Per sequence of `input_ids` [sequences, tokens]: the positions that carry massive activations in any
    block, the first such block, the number of positions in the block outputs and the outlier features
    (dim -> share of tokens), which are left out of the first two."""
    detected: list[_Detected] = []
    with capture_block_stats(model, structure, top_k=1, thresholds=thresholds) as collector:

        def consume(start: int, ids: torch.Tensor, output: object) -> None:
            (record,) = collector.pop()
            detected.append(_detected(record, thresholds))

        walk_windows(
            model, input_ids, 1, consume, description="attention: massive tokens", progress=progress,
            **_forward_kwargs(model),
        )  # fmt: skip
    return detected


def check_block(block: int | None, structure: Structure, what: str = "block") -> None:
    """Refuse a `block` outside the model; `what` names the parameter, or the list (`keep_maps`) that holds it."""
    if block is not None and not 0 <= block < len(structure):
        shown = given(what, block) if what == "block" else f"`{what}` holds {block}, which"
        raise MassactError(f"{shown} is out of range; the model has blocks 0..{len(structure) - 1}")


def _recorder(found: _Detected, structure: Structure, options: AttentionConfig) -> _Recorder:
    sinks = sorted(set(options.sinks)) if options.sinks is not None else found.sinks
    bad = [s for s in sinks if not 0 <= s < found.positions]
    if bad:
        raise MassactError(f"`sinks` holds {bad}, out of range; the sequence has positions 0..{found.positions - 1}")
    heatmap_block = options.block
    if heatmap_block is None:
        first = found.first_block
        heatmap_block = min(first + 1, len(structure) - 1) if first is not None else len(structure) // 2
    return _Recorder(sinks, options, heatmap_block)


def _sequence(model: nn.Module, structure: Structure, found: _Detected, recorder: _Recorder) -> SequenceAttention:
    if not recorder.records:
        raise MassactError(
            f"{type(model).__name__}: no block ran attention through transformers' attention interface, "
            "so its attention probabilities cannot be captured"
        )
    heads = next(iter(recorder.records.values())).sink.numel()
    for index in range(len(structure)):  # blocks whose token mixer is no softmax attention (linear, state-space)
        if index not in recorder.records:
            mixer = structure.attn(index)
            recorder.records[index] = no_softmax_record(heads, type(mixer).__name__ if mixer is not None else None)
    result = recorder.result
    result.first_massive_block = found.first_block
    result.features = found.features
    result.positions = found.positions
    result.heatmap_block = recorder.heatmap_block
    result.blocks = [recorder.records[i] for i in range(len(structure))]
    return result


def analyze_sequences(
    model: nn.Module, structure: Structure, input_ids: torch.Tensor, options: AttentionConfig, progress: bool = False
) -> list[SequenceAttention]:
    """Attention measures of every block on each sequence of `input_ids` [sequences, tokens]."""
    if input_ids.dim() != 2:
        raise ValueError("analyze_sequences takes sequences of shape [sequences, tokens]")
    found = find_sinks(model, structure, input_ids, options.thresholds, progress)
    recorders = [_recorder(f, structure, options) for f in found]
    passes = _AttentionPass(model, structure, recorders, options.intervene)
    with capture_attention(model, structure, passes.on_call), passes:
        walk_windows(
            model, input_ids, 1, passes.finish, description="attention", progress=progress, **_forward_kwargs(model)
        )
    return [_sequence(model, structure, f, r) for f, r in zip(found, recorders, strict=True)]


def analyze_sequence(
    model: nn.Module, structure: Structure, input_ids: torch.Tensor, options: AttentionConfig
) -> SequenceAttention:
    """Attention measures of every block on one sequence `input_ids` [1, tokens]."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError("analyze_sequence takes one sequence of shape [1, tokens]")
    return analyze_sequences(model, structure, input_ids, options)[0]


@result_kind(KIND, "attention.json", view=attention_charts)
@dataclass
class AttentionResult:
    """Measures over one or more sequences, with what is needed for the table, JSON and figures."""

    model: str
    num_blocks: int
    num_heads: int
    source: dict
    tokens: list[str]  # of the first sequence (heatmap axes)
    heatmap_block: int
    options: AttentionConfig
    sequences: list[SequenceAttention]
    prefix_tokens: list[str] | None = None  # corpus windows: the tokens each window starts with
    model_source: str | None = None  # the file the model came from (e.g. a GGUF), when the loader says
    quantization: str | None = None  # e.g. "Q4_1 GGUF, de-quantized to float32"
    precision: Precision | None = None  # whether the run's dtype held the block outputs
    execution: dict | None = None  # how the run executed: `LoadedModel.execution`

    @property
    def tokens_chosen(self) -> bool:
        """True when the tokens C were chosen by hand (`sinks`), not found as massive-activation tokens."""
        return self.options.sinks is not None

    @property
    def first_massive_block(self) -> int | None:
        firsts = [s.first_massive_block for s in self.sequences if s.first_massive_block is not None]
        return min(firsts) if firsts else None

    def block_summary(self) -> list[dict]:
        """Per block: means over sequences (and, per head, over sequences) of every measure; None when undefined."""
        rows = []
        for index in range(self.num_blocks):
            records = [s.blocks[index] for s in self.sequences]
            row: dict = {"index": index}
            heads = {name: torch.stack([getattr(r, name) for r in records]).nanmean(0) for name in PER_HEAD}
            row["sink_fraction"] = _num(heads["sink"].mean())
            row["sink_heads"] = [h for h, v in enumerate(heads["sink"].tolist()) if v >= 0.5]
            row["first_token_importance"] = _num(heads["first_importance"].mean())
            row["massive_mass"] = _num(heads["massive_mass"].nanmean())
            for name in PER_BLOCK:
                row[name] = _num(torch.tensor([getattr(r, name) for r in records]).nanmean())
            if "extra_key_mass" in records[0].extra:  # mean attention on keys past the sequence (explicit bias k')
                row["extra_keys"] = records[0].extra["extra_keys"]
                row["extra_key_mass"] = _num(torch.tensor([r.extra["extra_key_mass"] for r in records]).mean())
            row["per_head"] = {name: [_num(v) for v in heads[name]] for name in PER_HEAD}
            row["softmax_attention"] = records[0].extra.get("softmax_attention", True)
            row["mixer"] = records[0].extra.get("mixer")
            if self.learned_sinks:  # per head: mean over sequences of the learned sink's share
                shares = [r.extra["learned_sink_share"] for r in records if "learned_sink_share" in r.extra]
                per_head = torch.tensor(shares).mean(0).tolist() if shares else [None] * self.num_heads
                row["learned_sink_share"] = _num(torch.tensor(shares).mean()) if shares else None
                row["per_head"]["learned_sink_share"] = [v if v is None else _num(v) for v in per_head]
            rows.append(row)
        return rows

    @property
    def learned_sinks(self) -> bool:
        """True when any block's attention has a learned sink logit per head (GPT-OSS)."""
        return any("learned_sink_share" in b.extra for s in self.sequences for b in s.blocks)

    @property
    def no_softmax_blocks(self) -> list[int]:
        """Blocks that run no softmax attention (linear attention, state-space layers)."""
        blocks = self.sequences[0].blocks
        return [i for i, b in enumerate(blocks) if not b.extra.get("softmax_attention", True)]

    def to_json(self) -> dict:
        first = self.sequences[0]
        return {
            "kind": KIND,
            "model": self.model,
            "num_blocks": self.num_blocks,
            "num_heads": self.num_heads,
            "source": self.source,
            "model_source": self.model_source,
            "quantization": self.quantization,
            "prefix_tokens": self.prefix_tokens,
            "tokens_chosen": self.tokens_chosen,
            "sink_threshold": self.options.threshold,
            "massive_thresholds": self.options.thresholds.to_json(),
            "first_massive_block": self.first_massive_block,
            "learned_sinks": self.learned_sinks,
            "no_softmax_blocks": self.no_softmax_blocks,
            "sequences": [
                {
                    "massive_tokens": s.sinks,
                    "first_massive_block": s.first_massive_block,
                    "outlier_features": [{"dim": d, "token_share": v} for d, v in s.features.items()],
                }
                for s in self.sequences
            ],
            "tokens": self.tokens,
            "heatmap_block": self.heatmap_block,
            "logits_error": first.logits_error,
            "blocks": self.block_summary(),
            "precision": self.precision.to_json() if self.precision else None,
            "execution": self.execution,
        }

    def show(self, console: Console) -> None:
        """One table row per block, with the tokens C and the first massive block said in words."""
        views.show_attention(self, console)

    def write(self, out: Path) -> None:
        """attention.json, report.md and the figures into `out`."""
        views.write_attention(self, out)


def _num(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _analyze(
    model: nn.Module,
    structure: Structure,
    input_ids: torch.Tensor,
    options: AttentionConfig | None = None,
    *,
    name: str = "model",
    tokens: list[str] | None = None,
    source: dict | None = None,
    progress: bool = False,
) -> AttentionResult:
    """Measure every block's attention on each row of `input_ids` [sequences, tokens]."""
    options = options or AttentionConfig()
    check_capturable(model)
    check_block(options.block, structure)
    for block in options.keep_maps:
        check_block(block, structure, "keep_maps")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    check_memory(model, 1, input_ids.shape[1], options.logits, options.max_memory)
    progress = progress and (len(input_ids) > 1 or offload_of(model) is not None)  # block by block: show blocks
    sequences = analyze_sequences(model, structure, input_ids, options, progress)
    first = sequences[0]
    tokens = tokens or [str(int(i)) for i in input_ids[0]]
    if first.positions > len(tokens):  # the model prepends positions of its own (e.g. a learned sink token)
        tokens = ["<extra>"] * (first.positions - len(tokens)) + list(tokens)
    return AttentionResult(
        model=name,
        num_blocks=len(structure),
        num_heads=int(first.blocks[0].sink.numel()) if first.blocks else (num_heads(model) or 0),
        source=source or {},
        tokens=tokens,
        heatmap_block=first.heatmap_block,
        options=options,
        sequences=sequences,
    )


def run(
    loaded: LoadedModel, inputs: str | torch.Tensor | AttentionInput, config: AttentionConfig | None = None
) -> AttentionResult:
    """Measure every block's attention on `inputs`: a prompt, token ids [sequences, tokens] or an `AttentionInput`."""
    config = config or AttentionConfig()
    if isinstance(inputs, str):
        inputs = prompt_input(loaded, inputs)
    elif isinstance(inputs, torch.Tensor):
        ids = inputs[None] if inputs.dim() == 1 else inputs
        tokenizer = loaded.tokenizer
        strings = [tokenizer.decode([i]) for i in ids[0].tolist()] if tokenizer is not None else None
        inputs = AttentionInput(ids, strings or [str(int(i)) for i in ids[0]])
    structure = find_structure(loaded.model, config.blocks_path)
    with BlockPeaks(loaded.model, structure) as peaks:
        result = _analyze(
            loaded.model,
            structure,
            inputs.input_ids,
            config,
            name=loaded.name,
            tokens=inputs.tokens,
            source=inputs.source,
            progress=True,
        )
    result.precision = Precision.from_peaks(peaks)
    result.prefix_tokens = inputs.prefix_tokens
    result.model_source = getattr(loaded, "source", None)
    result.quantization = getattr(loaded, "quantization", None)
    result.execution = loaded.execution()
    return result
