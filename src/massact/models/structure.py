"""Find the residual blocks of any transformer from its module tree.

No per-model code: the blocks are the largest list of identical sub-modules, and
attention / MLP inside a block are found by their child names. `KNOWN_PARTS` is
the one small table for block classes whose names say nothing.

A mixture-of-experts MLP (Mixtral, Qwen-MoE, OLMoE, DeepSeek, ...) is found like any MLP; `moe_parts`
then finds its experts (a list of expert MLPs, or one module holding every expert as a 3-D
parameter, as transformers 5 stores them), its router and any shared experts, again from the
module tree alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from massact.errors import MassactError

# Block class name -> (attention child, MLP child) where name patterns are not enough.
KNOWN_PARTS: dict[str, tuple[str | None, str | None]] = {
    "BertLayer": ("attention", "output"),
    "RobertaLayer": ("attention", "output"),
    "OPTDecoderLayer": ("self_attn", "fc2"),
}

_ATTN = re.compile(r"(self_?attn|self_?attention|attention|attn)$")
_MLP = re.compile(r"(mlp|feed_?forward|ffn|ff|block_sparse_moe|moe|intermediate)$")


@dataclass
class Structure:
    """Where the residual blocks (and their attention / MLP) live in a model."""

    blocks_path: str
    blocks: list[nn.Module]
    attn_names: list[str | None]
    mlp_names: list[str | None]
    alternatives: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.blocks)

    def block_path(self, index: int) -> str:
        return f"{self.blocks_path}.{index}" if self.blocks_path else str(index)

    def attn(self, index: int) -> nn.Module | None:
        name = self.attn_names[index]
        return self.blocks[index].get_submodule(name) if name else None

    def mlp(self, index: int) -> nn.Module | None:
        name = self.mlp_names[index]
        return self.blocks[index].get_submodule(name) if name else None

    def attn_path(self, index: int) -> str | None:
        name = self.attn_names[index]
        return f"{self.block_path(index)}.{name}" if name else None

    def mlp_path(self, index: int) -> str | None:
        name = self.mlp_names[index]
        return f"{self.block_path(index)}.{name}" if name else None

    def moe(self, index: int) -> MoeParts | None:
        """The experts, router and shared experts of block `index`'s MLP, or None for a dense MLP."""
        return moe_parts(self.mlp(index))


@dataclass(frozen=True)
class MoeParts:
    """Where the parts of one mixture-of-experts MLP live (names relative to the MLP module)."""

    experts: str  # the experts module: a ModuleList of expert MLPs, or one module with 3-D parameters
    num_experts: int
    fused: bool  # True when every expert is a slice of 3-D parameters (e.g. `down_proj` [experts, out, in])
    router: str | None  # the module that scores the experts
    shared: tuple[str, ...] = ()  # shared experts that run on every token


_EXPERTS = re.compile(r"experts?$")
_ROUTER = re.compile(r"(gate|router)$")


def _fused_experts(module: nn.Module) -> int | None:
    """The number of experts when `module` stores them as 3-D parameters with one leading expert axis."""
    sizes = {p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 3}
    return sizes.pop() if len(sizes) == 1 else None


def moe_parts(mlp: nn.Module | None) -> MoeParts | None:
    """The experts, router and shared experts inside `mlp`, or None when it has no experts."""
    if mlp is None:
        return None
    for name, child in mlp.named_children():
        if not _EXPERTS.search(name) or "shared" in name:
            continue
        fused = _fused_experts(child)
        if fused is not None:
            count, is_fused = fused, True
        elif isinstance(child, nn.ModuleList) and len(child) > 1 and len({type(c) for c in child}) == 1:
            count, is_fused = len(child), False
        else:
            continue
        router = next(
            (
                other
                for other, module in mlp.named_children()
                if _ROUTER.search(other) and "shared" not in other and _scores(module, count)
            ),
            None,
        )
        shared = tuple(
            other
            for other, module in mlp.named_children()
            if "shared" in other and other != name and not _ROUTER.search(other) and _param_count(module) > 0
        )
        return MoeParts(experts=name, num_experts=count, fused=is_fused, router=router, shared=shared)
    return None


def _scores(module: nn.Module, count: int) -> bool:
    """True when `module` holds a [count, ...] weight, i.e. it scores `count` experts."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[0] == count


def is_linear(module: nn.Module) -> bool:
    """An `nn.Linear` (or subclass) or a transformers `Conv1D` (GPT-2 style, weight stored [in, out])."""
    return isinstance(module, (nn.Linear, Conv1D))


def in_features(module: nn.Module) -> int:
    """Input size of a Linear or Conv1D."""
    return module.in_features if isinstance(module, nn.Linear) else int(module.weight.shape[0])


def out_features(module: nn.Module) -> int:
    """Output size of a Linear or Conv1D."""
    return module.out_features if isinstance(module, nn.Linear) else int(module.weight.shape[1])


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
        return False
    kinds = {type(child).__name__ for child in module}
    composite = all(len(list(child.children())) >= 2 for child in module)
    return len(kinds) == 1 and composite and _param_count(module) > 0


def _child_matching(block: nn.Module, pattern: re.Pattern[str]) -> str | None:
    for name, _ in block.named_children():
        if "norm" in name or name.startswith("ln"):
            continue
        if pattern.search(name):
            return name
    return None


def _parts(block: nn.Module) -> tuple[str | None, str | None]:
    known = KNOWN_PARTS.get(type(block).__name__)
    if known is not None:
        return known
    return _child_matching(block, _ATTN), _child_matching(block, _MLP)


def find_structure(model: nn.Module, blocks_path: str | None = None) -> Structure:
    """Locate the residual blocks of `model`, or at `blocks_path` when given (e.g. "model.layers")."""
    if blocks_path:
        try:
            blocks_module = model.get_submodule(blocks_path)
        except AttributeError:
            raise MassactError(
                f"`blocks_path={blocks_path!r}`: no such module in {type(model).__name__}; "
                "give the dotted path of the list of blocks (e.g. model.layers)"
            ) from None
        if not isinstance(blocks_module, (nn.ModuleList, nn.Sequential)) or len(blocks_module) == 0:
            raise MassactError(
                f"`blocks_path={blocks_path!r}` is a {type(blocks_module).__name__}, not a list of blocks; "
                "give the path of an nn.ModuleList of blocks"
            )
        candidates = [(blocks_path, blocks_module)]
    else:
        candidates = [(name, mod) for name, mod in model.named_modules() if _is_block_list(mod)]
        if not candidates:
            raise MassactError(
                f"could not find the residual blocks of {type(model).__name__}: no list of identical blocks; "
                "give `blocks_path`, the dotted path of its nn.ModuleList of blocks (e.g. model.layers)"
            )
        candidates.sort(key=lambda item: _param_count(item[1]), reverse=True)
    path, blocks_module = candidates[0]
    blocks = list(blocks_module)
    parts = [_parts(block) for block in blocks]
    return Structure(
        blocks_path=path,
        blocks=blocks,
        attn_names=[a for a, _ in parts],
        mlp_names=[m for _, m in parts],
        alternatives=[name for name, _ in candidates[1:]],
    )
