"""A llama.cpp importance matrix: for every weight of the blocks, the sum over tokens of x_j^2 for each input
column j, in the GGUF layout `llama-imatrix` writes and `llama-quantize --imatrix` reads.

The layout (llama.cpp `tools/imatrix/imatrix.cpp`, `save_imatrix`): no architecture key; `general.type` =
"imatrix"; `imatrix.datasets` (array of strings), `imatrix.chunk_count` and `imatrix.chunk_size` (uint32);
then per weight, in sorted name order, `<name>.in_sum2` (float32 [in_features]: sum of x^2) and
`<name>.counts` (float32 [1]: the tokens seen), 1-D as ggml stores a [n, 1] tensor. `llama-quantize`
divides `in_sum2` by `counts` and weighs each column's rounding error by the result. A 3-D expert weight
holds one row per expert (ne [in_features, experts], counts [1, experts]: the tokens routed to each);
fused experts are not Linear modules and are not written here.

Names are llama.cpp's own (`blk.N.attn_q.weight`, `blk.N.ffn_down.weight`, ...), from transformers' GGUF
name map (built on gguf's `TensorNameMap`); only weights inside blocks (`blk.*`), as `llama-imatrix` keeps
by default (the output head only with its `--process-output`). Sums run in float64 and are written as
float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import torch
from torch import nn

from massact.errors import MassactError
from massact.format import fmt_number, md_code
from massact.models.structure import is_linear
from massact.validate import given

GENERAL_TYPE = "imatrix"
IMATRIX = given("formats", "imatrix")  # what a refusal names: the format the caller asked for


def gguf_weight_names(model: nn.Module) -> dict[str, str]:
    """Linear (or Conv1D) module name -> llama.cpp GGUF weight name (`blk.N.*.weight`), from transformers'
    GGUF name map; a model whose architecture the map does not know is refused in one line."""
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    why = f"llama.cpp has no tensor names for model type {model_type!r} in gguf's name map"
    try:
        to_hf = get_gguf_hf_weights_map(model, TensorProcessor())
    except (NotImplementedError, AttributeError, KeyError, TypeError):
        raise MassactError(f"{IMATRIX}: {why}; choose other formats") from None
    to_gguf = {hf: name for name, hf in to_hf.items()}
    names = {}
    for module_name, module in model.named_modules():
        gguf_name = to_gguf.get(f"{module_name}.weight", "")
        if is_linear(module) and gguf_name.startswith("blk."):
            names[module_name] = gguf_name
    if not names:
        raise MassactError(f"{IMATRIX}: {why} for any Linear inside its blocks; choose other formats")
    return names


@dataclass
class Imatrix:
    """Per GGUF weight name: sum of x^2 per input column (float64) and the tokens seen."""

    sums2: dict[str, torch.Tensor]
    counts: dict[str, int]
    modules: dict[str, str]  # GGUF weight name -> module name in the model
    datasets: list[str]
    chunk_count: int  # windows
    chunk_size: int  # tokens per window

    @classmethod
    def from_sums(
        cls, names: dict[str, str], sums: dict[str, tuple[torch.Tensor, int]], datasets: list[str], windows: list[int]
    ) -> Imatrix:
        """From the sums of x^2 per module (`ChannelSquares.sums`) and module name -> GGUF weight name (modules
        that never ran are left out); `windows` is [chunk count, chunk size]."""
        seen = [name for name in names if name in sums]
        return cls(
            sums2={names[n]: sums[n][0] for n in seen},
            counts={names[n]: sums[n][1] for n in seen},
            modules={names[n]: n for n in seen},
            datasets=datasets,
            chunk_count=windows[0],
            chunk_size=windows[1],
        )

    def mean_squares(self, name: str) -> torch.Tensor:
        """E[x_j^2] per input column: what `llama-quantize` reads (in_sum2 / counts)."""
        return self.sums2[name] / max(self.counts[name], 1)

    def peaks(self, top: int = 5) -> list[dict]:
        """The weights whose largest E[x_j^2] is largest: where massive inputs weigh on the quantization."""
        rows = []
        for name in self.sums2:
            ms = self.mean_squares(name)
            column = int(ms.argmax())
            rows.append({"tensor": name, "module": self.modules[name], "column": column, "mean_sq": float(ms[column])})
        return sorted(rows, key=lambda r: -r["mean_sq"])[:top]

    def to_json(self) -> dict:
        return {
            "general.type": GENERAL_TYPE,
            "datasets": self.datasets,
            "chunk_count": self.chunk_count,
            "chunk_size": self.chunk_size,
            "tensors": {
                name: {"module": self.modules[name], "count": self.counts[name], "max_mean_sq": p}
                for name in sorted(self.sums2)
                for p in [float(self.mean_squares(name).max())]
            },
            "peaks": self.peaks(),
        }

    def write(self, path: Path) -> None:
        """The GGUF file, tensors and keys in the order `llama-imatrix` writes them; refused when a sum is not
        finite (`llama-quantize` rejects such a file)."""
        broken = [name for name in sorted(self.sums2) if not bool(torch.isfinite(self.sums2[name]).all())]
        if broken:
            raise MassactError(
                f"{IMATRIX}: the inputs of {len(broken)} weights are not finite (first {broken[0]}): the "
                "run's dtype overflowed; run in float32 or bfloat16 (`dtype`)"
            )
        writer = _ImatrixWriter(path, arch="")
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(gguf.Keys.IMatrix.DATASETS, list(self.datasets))
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, self.chunk_count)
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, self.chunk_size)
        for name in sorted(self.sums2):
            writer.add_tensor(f"{name}.in_sum2", self.sums2[name].float().numpy())
            writer.add_tensor(f"{name}.counts", torch.tensor([float(self.counts[name])]).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


class _ImatrixWriter(gguf.GGUFWriter):
    def add_architecture(self) -> None:  # an imatrix file names no architecture
        pass


def usage(file: str, imatrix: Imatrix | None) -> list[str]:
    """report.md lines: what the file holds and how `llama-quantize` uses it."""
    lines = [
        "A llama.cpp importance matrix in the GGUF layout `llama-imatrix` writes (`general.type` = imatrix;",
        "`imatrix.datasets`, `imatrix.chunk_count` = windows, `imatrix.chunk_size` = tokens per window): for",
        "every weight inside the blocks, under llama.cpp's tensor name, `<name>.in_sum2` (sum over tokens of",
        "x_j^2 per input column) and `<name>.counts` (tokens). Quantize a GGUF of the same model with it",
        "(convert the model first with llama.cpp's `convert_hf_to_gguf.py`):",
        "",
        "```",
        f"llama-quantize --imatrix {file} model-f16.gguf model-Q4_K_M.gguf Q4_K_M",
        "```",
        "",
        "The output head is left out, as `llama-imatrix` leaves it out by default (`--process-output`).",
        "",
    ]
    if imatrix is None:
        return lines
    lines += [
        f"{len(imatrix.sums2)} weights over {imatrix.chunk_count} windows of {imatrix.chunk_size} tokens.",
        "The largest mean x_j^2 (`llama-quantize` weighs each column's rounding error by it):",
        "",
        "| tensor | module | column | mean x^2 |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {md_code(r['tensor'])} | {md_code(r['module'])} | {r['column']} | {fmt_number(r['mean_sq'])} |"
        for r in imatrix.peaks()
    ]
    return lines
