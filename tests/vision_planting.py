"""Tiny random vision transformers with massive activations planted on the class token and on a register.

As for text (tests/planting.py): a carrier dim is set on one prefix token only (the class token or one
register token parameter) and kept out of the patches and of every residual writer up to the plant; in
the plant block one MLP unit reads the carrier and its down-projection writes `gain` into the target dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers as tf
from torch import nn

from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.vision.pipeline import vision_module

H = 32
SIZE = 32  # image side
PATCH = 8  # -> a 4x4 patch grid
SMALL = {"hidden_size": H, "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": SIZE, "patch_size": PATCH}


def tiny_vit(family: str, classifier: bool = False) -> nn.Module:
    """A seeded 4-block random vision model of `family`: vit, clip, clip_full, dinov2, dinov2_reg."""
    torch.manual_seed(0)
    if family == "vit":
        config = tf.ViTConfig(**SMALL, intermediate_size=64, num_labels=3)
        model = tf.ViTForImageClassification(config) if classifier else tf.ViTModel(config, add_pooling_layer=False)
    elif family == "clip":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**SMALL, intermediate_size=64))
    elif family == "clip_full":
        text = {"hidden_size": H, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
        vision = {**SMALL, "intermediate_size": 64}
        config = tf.CLIPConfig(
            text_config={**text, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1},
            vision_config=vision,
            projection_dim=16,
        )
        model = tf.CLIPModel(config)
    elif family == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**SMALL, mlp_ratio=2))
    elif family == "dinov2_reg":
        config = tf.Dinov2WithRegistersConfig(**SMALL, mlp_ratio=2, num_register_tokens=4, num_labels=3)
        cls = tf.Dinov2WithRegistersForImageClassification if classifier else tf.Dinov2WithRegistersModel
        model = cls(config)
    else:
        raise ValueError(family)
    return model.eval()


def processor_for(family: str):
    """The family's own image processor, sized for the tiny model."""
    crop = {"height": SIZE, "width": SIZE}
    if family.startswith("clip"):
        return tf.CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=crop)
    if family.startswith("dinov2"):
        return tf.BitImageProcessor(size={"shortest_edge": SIZE}, crop_size=crop, do_convert_rgb=True)
    return tf.ViTImageProcessor(size=crop)


def loaded_tiny(family: str, classifier: bool = False) -> LoadedModel:
    processor = processor_for(family)
    return LoadedModel(model=tiny_vit(family, classifier), processor=processor, name=f"tiny-{family}")


@dataclass
class Plant:
    block: int
    token: str  # "CLS" or "reg<r>"
    dim: int


def _prefix_params(module: nn.Module) -> tuple[nn.Parameter, nn.Parameter | None]:
    cls = reg = None
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("cls_token", "class_embedding"):
            cls = param
        elif leaf in ("register_tokens", "reg_token"):
            reg = param
    return cls, reg


@torch.no_grad()
def plant_vit(model: nn.Module, plants: list[Plant], gain: float = 400.0) -> list[Plant]:
    """Plant each massive activation: the block writes `gain` into `dim` of the named prefix token only."""
    module = vision_module(model)
    structure = find_structure(module)
    cls_param, reg_param = _prefix_params(module)
    carriers = {}
    for number, plant in enumerate(plants):
        carrier = 3 + 5 * number
        carriers[plant.token] = carrier
        for name, param in module.named_parameters():  # keep the carrier out of patches and positions
            if "pos" in name or "patch" in name:
                if param.dim() >= 1 and param.shape[0] == H and "weight" in name or name.endswith("bias"):
                    if param.shape[0] == H:
                        param[carrier] = 0.0
                elif param.shape[-1] == H:
                    param[..., carrier] = 0.0
        for param in (cls_param, reg_param):
            if param is not None:
                param[..., carrier] = 0.0
        target = cls_param if plant.token == "CLS" else reg_param[..., int(plant.token[3:]), :]
        target[..., carrier] = 1.0
        for index in range(max(p.block for p in plants) + 1):
            for sub in structure.blocks[index].modules():
                if isinstance(sub, nn.Linear) and sub.out_features == H:
                    sub.weight[carrier] = 0.0
                    if sub.bias is not None:
                        sub.bias[carrier] = 0.0
        attn_params = {id(p) for p in structure.attn(plant.block).parameters()}
        linears = [
            m
            for m in structure.blocks[plant.block].modules()
            if isinstance(m, nn.Linear) and id(m.weight) not in attn_params
        ]
        up = next(m for m in linears if m.in_features == H and m.out_features != H)
        down = next(m for m in linears if m.out_features == H and m.in_features != H)
        unit = 5 + number
        up.weight[unit] = 0.0
        up.weight[unit, carrier] = 8.0
        up.bias[unit] = -16.0
        down.weight[:, unit] = 0.0
        down.weight[plant.dim, unit] = gain
    return plants
