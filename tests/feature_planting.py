"""Tiny models with two kinds of outliers planted: a massive activation on one token and an outlier feature.

The massive activation is `planting.plant_massive`'s (block `L` writes a huge value into one dim of the
MARK token only). The outlier feature is the LLM.int8 kind: one dim large on every token, written by an
earlier block through a bias entry of its MLP's output projection (and, on Gemma-3's sandwich-norm
blocks, the weight entry of the norm after the MLP, which would otherwise scale it back down).
"""

from __future__ import annotations

import torch
from planting import MARK, H, Plant, plant_massive, tiny_gemma3, tiny_model
from torch import nn

from massact.models.structure import find_structure


def _down_projection(model: nn.Module, block: int) -> nn.Linear:
    mlp = find_structure(model).mlp(block)
    return next(m for m in mlp.modules() if isinstance(m, nn.Linear) and m.out_features == H)


@torch.no_grad()
def plant_feature(model: nn.Module, block: int, dim: int, value: float = 1000.0) -> None:
    """Make block `block` add about `value` to `dim` of every token (an outlier feature)."""
    down = _down_projection(model, block)
    if down.bias is None:
        down.bias = nn.Parameter(torch.zeros(H))
    down.bias[dim] = value
    post = getattr(find_structure(model).blocks[block], "post_feedforward_layernorm", None)
    if post is not None:  # Gemma's norm after the MLP: the normalized dim is about sqrt(H); scale it back up
        post.weight[dim] = value / H**0.5 - 1.0  # Gemma's norms multiply by (1 + weight)


@torch.no_grad()
def _keep_sandwich_massive(model: nn.Module, plant: Plant) -> None:
    """On a sandwich-norm block, the norm after the MLP would normalize the planted value away: only the
    planted unit writes the dim (so other tokens get none of it) and the norm's entry scales it back up."""
    block = find_structure(model).blocks[plant.block]
    post = getattr(block, "post_feedforward_layernorm", None)
    if post is None:
        return
    down = _down_projection(model, plant.block)
    gain = float(down.weight[plant.dim].abs().max())
    down.weight[plant.dim] = 0.0
    down.weight[plant.dim, 5] = gain  # the unit plant_massive uses
    post.weight[plant.dim] = 2000.0


def two_kinds(
    family: str, massive_block: int = 2, feature_block: int = 0, carrier: float = 90.0
) -> tuple[nn.Module, Plant, int]:
    """`family` ("gemma3", "llama", "qwen2") with a massive activation in dim 4 of each MARK token from
    `massive_block` and an outlier feature in dim 9 of every token from `feature_block`.

    The carrier of the massive plant (dim 3 of MARK) is raised to `carrier` so that the feature, which
    dominates every later norm, does not drown it: at 90 it stays below the criterion; at 150 it is a
    small massive activation of its own on MARK from block 0."""
    model = tiny_gemma3() if family == "gemma3" else tiny_model(family)
    plant = plant_massive(model, block=massive_block, dim=4)
    _keep_sandwich_massive(model, plant)
    with torch.no_grad():
        model.get_input_embeddings().weight[MARK, 3] = carrier
    feature = 9
    plant_feature(model, feature_block, feature)
    return model, plant, feature
