"""`scan`: one forward pass, every block summarised, massive activations located."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from massact.capture.stats import BlockRecord, capture_block_stats
from massact.detect import Thresholds, token_kind
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.models.structure import Structure, find_structure

DEFAULT_PROMPT = "Summer is warm. Winter is cold."


@dataclass
class TextInput:
    """A tokenized prompt: ids plus one display string and one kind per position."""

    input_ids: torch.Tensor  # [1, tokens]
    tokens: list[str]
    special: list[bool]

    @property
    def kinds(self) -> list[str]:
        return [token_kind(t, i, s) for i, (t, s) in enumerate(zip(self.tokens, self.special))]


def tokenize_prompt(loaded: LoadedModel, prompt: str, add_special_tokens: bool = True) -> TextInput:
    """Tokenize `prompt` for `loaded`, refusing empty or over-long prompts with a clear message."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise MassactError(f"{loaded.name} has no tokenizer, so it takes no text prompt; give it --images instead")
    if not prompt or not prompt.strip():
        raise MassactError("the prompt is empty; give --prompt TEXT (or --text-file PATH) with some text")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)["input_ids"]
    if ids.numel() == 0:
        raise MassactError("the prompt tokenizes to zero tokens; give a longer --prompt")
    limit = loaded.context_length
    if limit is not None and ids.shape[1] > limit:
        raise MassactError(
            f"the prompt has {ids.shape[1]} tokens but the model takes at most {limit}; shorten the prompt"
        )
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    id_list = ids[0].tolist()
    tokens = [tokenizer.decode([i]) for i in id_list]
    return TextInput(input_ids=ids, tokens=tokens, special=[i in special_ids for i in id_list])


@dataclass
class MassiveActivation:
    block: int
    token: int
    token_text: str
    dim: int
    value: float
    ratio: float
    kind: str

    def to_json(self) -> dict:
        return {
            "block": self.block,
            "token": self.token,
            "token_text": self.token_text,
            "token_kind": self.kind,
            "dim": self.dim,
            "value": self.value,
            "magnitude": abs(self.value),
            "ratio": self.ratio,
        }


def find_massive(records: list[BlockRecord], tokens: list[str], kinds: list[str]) -> list[MassiveActivation]:
    """Every entry the capture flagged, by block, largest magnitude first."""
    found = []
    for block, record in enumerate(records):
        entries = zip(record.massive_tokens.tolist(), record.massive_dims.tolist(), record.massive_values.tolist())
        rows = [
            MassiveActivation(
                block=block,
                token=t,
                token_text=tokens[t] if t < len(tokens) else "",
                dim=d,
                value=v,
                ratio=abs(v) / record.median if record.median > 0 else math.inf,
                kind=kinds[t] if t < len(kinds) else "other",
            )
            for t, d, v in entries
        ]
        found.extend(sorted(rows, key=lambda m: -abs(m.value)))
    return found


def summarize_massive(massive: list[MassiveActivation], tokens: list[str], kinds: list[str]) -> dict:
    """Dims, tokens, first/last block, and one line per (token, dim) site."""
    if not massive:
        return {"dims": [], "tokens": [], "first_block": None, "last_block": None, "sites": []}
    sites: dict[tuple[int, int], list[MassiveActivation]] = {}
    for m in massive:
        sites.setdefault((m.token, m.dim), []).append(m)
    site_rows = []
    for (token, dim), rows in sites.items():
        peak = max(rows, key=lambda m: abs(m.value))
        site_rows.append(
            {
                "token": token,
                "token_text": tokens[token],
                "token_kind": kinds[token],
                "dim": dim,
                "first_block": min(m.block for m in rows),
                "last_block": max(m.block for m in rows),
                "num_blocks": len(rows),
                "peak_block": peak.block,
                "peak_value": peak.value,
                "peak_ratio": peak.ratio,
            }
        )
    site_rows.sort(key=lambda s: -abs(s["peak_value"]))
    dims = list(dict.fromkeys(s["dim"] for s in site_rows))
    token_positions = list(dict.fromkeys(s["token"] for s in site_rows))
    return {
        "dims": dims,
        "tokens": [{"token": t, "token_text": tokens[t], "token_kind": kinds[t]} for t in token_positions],
        "first_block": min(m.block for m in massive),
        "last_block": max(m.block for m in massive),
        "sites": site_rows,
    }


@dataclass
class ScanResult:
    """What `scan` found on one input."""

    model: str
    structure: Structure
    hidden_size: int
    tokens: list[str]
    kinds: list[str]
    thresholds: Thresholds
    records: list[BlockRecord]
    massive: list[MassiveActivation]
    summary: dict
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    prompt: str | None = None
    dtype: str = "float32"

    @property
    def num_blocks(self) -> int:
        return len(self.records)

    @property
    def first_block(self) -> int | None:
        return self.summary["first_block"]

    def top_magnitudes(self, rank: int) -> list[float]:
        """The rank-th largest magnitude (1-based) of every block."""
        return [float(r.top_magnitudes[rank - 1]) if r.top_values.numel() >= rank else math.nan for r in self.records]

    def medians(self) -> list[float]:
        return [r.median for r in self.records]

    def to_json(self) -> dict:
        blocks = []
        for index, record in enumerate(self.records):
            top = [
                {"value": v, "magnitude": abs(v), "token": t, "dim": d}
                for v, t, d in zip(record.top_values.tolist(), record.top_tokens.tolist(), record.top_dims.tolist())
            ]
            blocks.append(
                {
                    "index": index,
                    "median": record.median,
                    "top": top,
                    "top1_ratio": (abs(top[0]["value"]) / record.median) if top and record.median > 0 else None,
                    "num_massive": int(record.massive_values.numel()),
                    "massive_truncated": record.massive_truncated,
                    "nonfinite": record.nonfinite,
                    "nonfinite_sites": [{"token": t, "dim": d, "value": repr(v)} for t, d, v in record.nonfinite_sites],
                }
            )
        return {
            "model": self.model,
            "num_blocks": self.num_blocks,
            "hidden_size": self.hidden_size,
            "blocks_path": self.structure.blocks_path,
            "dtype": self.dtype,
            "prompt": self.prompt,
            "tokens": self.tokens,
            "token_kinds": self.kinds,
            "thresholds": {"abs": self.thresholds.abs, "ratio": self.thresholds.ratio},
            "blocks": blocks,
            "massive": [m.to_json() for m in self.massive],
            "summary": self.summary,
            "nonfinite_blocks": [b["index"] for b in blocks if b["nonfinite"]],
        }


def _forward(loaded: LoadedModel, input_ids: torch.Tensor) -> None:
    device = loaded.device
    with torch.no_grad():
        loaded.model(input_ids=input_ids.to(device), attention_mask=torch.ones_like(input_ids).to(device))


def scan(
    loaded: LoadedModel,
    prompt: str = DEFAULT_PROMPT,
    *,
    thresholds: Thresholds | None = None,
    top_k: int = 16,
    keep: int | None = None,
    keep_first_massive: bool = False,
    add_special_tokens: bool = True,
    blocks_path: str | None = None,
) -> ScanResult:
    """Run `prompt` through the model once and report every block and every massive activation.

    `keep` keeps that block's output; `keep_first_massive` keeps the first massive block's
    output (found by a second, hooked pass) for the 3D figure.
    """
    thresholds = thresholds or Thresholds()
    structure = find_structure(loaded.model, blocks_path)
    text = tokenize_prompt(loaded, prompt, add_special_tokens)
    if keep is not None and not 0 <= keep < len(structure):
        raise MassactError(f"--keep {keep} is out of range; the model has blocks 0..{len(structure) - 1}")
    keep_set = () if keep is None else (keep,)
    with capture_block_stats(loaded.model, structure, top_k=top_k, thresholds=thresholds, keep=keep_set) as c:
        _forward(loaded, text.input_ids)
        (record,) = c.pop()
    extra = int(record.blocks[0].positions.numel()) - len(text.tokens)
    if extra > 0:  # the model prepends learned tokens of its own (e.g. a sink token) at positions 0..extra-1
        text = TextInput(text.input_ids, ["<extra>"] * extra + text.tokens, [True] * extra + text.special)
    kinds = text.kinds
    massive = find_massive(record.blocks, text.tokens, kinds)
    summary = summarize_massive(massive, text.tokens, kinds)
    kept = dict(record.kept)
    if keep_first_massive and keep is None:
        ratios = [abs(float(r.top_values[0])) / r.median if r.median > 0 else 0.0 for r in record.blocks]
        target = (
            summary["first_block"]
            if summary["first_block"] is not None
            else max(range(len(ratios)), key=ratios.__getitem__)
        )
        with capture_block_stats(loaded.model, structure, top_k=1, thresholds=thresholds, keep=(target,)) as c:
            _forward(loaded, text.input_ids)
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
        dtype=str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
    )
