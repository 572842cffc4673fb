"""How to feed images to a vision transformer and name its tokens, for any ViT we can load.

transformers vision models (ViT, CLIP vision or the vision tower of a full CLIP, DINOv2,
DINOv2 with registers, timm models wrapped by transformers) are preprocessed by their own
image processor; a bare timm model by its timm data config.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from massact.errors import MassactError
from massact.models.loading import LoadedModel


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence of a ViT: class token(s), register tokens, then a grid of patches."""

    num_cls: int
    num_registers: int
    grid: tuple[int, int]

    @property
    def num_prefix(self) -> int:
        return self.num_cls + self.num_registers

    @property
    def register_positions(self) -> list[int]:
        return list(range(self.num_cls, self.num_prefix))

    def labels(self) -> list[str]:
        """'CLS', 'reg0'.., 'patch(r,c)' (several class tokens are 'CLS0', 'CLS1', ...)."""
        cls = ["CLS"] if self.num_cls == 1 else [f"CLS{i}" for i in range(self.num_cls)]
        regs = [f"reg{i}" for i in range(self.num_registers)]
        rows, cols = self.grid
        return cls + regs + [f"patch({r},{c})" for r in range(rows) for c in range(cols)]

    def kinds(self) -> list[str]:
        rows, cols = self.grid
        return ["cls"] * self.num_cls + ["register"] * self.num_registers + ["patch"] * (rows * cols)


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _vision_config(config):
    return getattr(config, "vision_config", None) or config


def vision_module(model: nn.Module) -> nn.Module:
    """The module that takes images: the vision tower of a dual encoder (CLIP, SigLIP), else the model."""
    tower = getattr(model, "vision_model", None)
    if isinstance(tower, nn.Module) and getattr(model, "text_model", None) is not None:
        return tower
    return model


def _timm_model(module: nn.Module) -> nn.Module | None:
    """The timm model inside `module` (itself, or transformers' TimmWrapper), if any."""
    inner = getattr(module, "timm_model", None)
    candidate = inner if isinstance(inner, nn.Module) else module
    if type(candidate).__module__.startswith("timm.") and hasattr(candidate, "patch_embed"):
        return candidate
    return None


def is_vision_model(loaded: LoadedModel) -> bool:
    """True for a model that takes pixels (has a patch size, or is a timm ViT)."""
    module = vision_module(loaded.model)
    if _timm_model(module) is not None:
        return True
    config = _vision_config(getattr(module, "config", None))
    return config is not None and getattr(config, "patch_size", None) is not None


class VisionPipeline:
    """Images -> pixel tensors -> one forward of the vision module; token labels for its sequence."""

    def __init__(self, loaded: LoadedModel) -> None:
        if not is_vision_model(loaded):
            raise MassactError(
                f"{loaded.name} is not a vision transformer (no patch embedding); `images` need a ViT, "
                "CLIP, DINOv2 or timm ViT model"
            )
        self.loaded = loaded
        self.module = vision_module(loaded.model)
        self.timm = _timm_model(self.module)
        self._transform = None
        if loaded.processor is None and self.timm is not None and self.timm is self.module:
            import timm.data

            data_config = timm.data.resolve_data_config({}, model=self.timm)
            img_size = getattr(self.timm.patch_embed, "img_size", None)
            if img_size is not None:  # a model built without a pretrained config: its own input size
                data_config["input_size"] = (3, *_pair(img_size))
            self._transform = timm.data.create_transform(**data_config)
        elif loaded.processor is None:
            raise MassactError(
                f"{loaded.name} has no image processor (preprocessor_config.json); save the model's image "
                "processor next to it or load it from its hub id"
            )
        self._takes_pixel_values = "pixel_values" in inspect.signature(self.module.forward).parameters

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[batch, 3, H, W] preprocessed exactly as the model expects."""
        if self._transform is not None:
            batch = torch.stack([self._transform(image) for image in images])
        else:
            processor = getattr(self.loaded.processor, "image_processor", self.loaded.processor)
            batch = processor(images=list(images), return_tensors="pt")["pixel_values"]
        return batch.to(self.device, self.dtype)

    def forward(self, pixel_values: torch.Tensor):
        """One forward pass of the vision module (no grad)."""
        try:
            with torch.no_grad():
                if self._takes_pixel_values:
                    return self.module(pixel_values=pixel_values)
                return self.module(pixel_values)
        except (RuntimeError, AssertionError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MassactError(
                f"{self.loaded.name} could not run on images of shape {tuple(pixel_values.shape)} ({first}); "
                "check that the image processor matches the model"
            ) from None

    def patch_size(self) -> tuple[int, int]:
        if self.timm is not None:
            return _pair(self.timm.patch_embed.patch_size)
        return _pair(_vision_config(self.module.config).patch_size)

    def num_registers(self) -> int:
        if self.timm is not None:
            return int(getattr(self.timm, "num_reg_tokens", 0) or 0)
        return int(getattr(_vision_config(self.module.config), "num_register_tokens", 0) or 0)

    def layout(self, pixel_shape: Sequence[int], num_tokens: int) -> TokenLayout:
        """Labels for a sequence of `num_tokens` tokens made from images of `pixel_shape` [.., H, W]."""
        ph, pw = self.patch_size()
        grid = (int(pixel_shape[-2]) // ph, int(pixel_shape[-1]) // pw)
        registers = self.num_registers()
        num_cls = num_tokens - grid[0] * grid[1] - registers
        if num_cls < 0:
            raise MassactError(
                f"{self.loaded.name}: {num_tokens} tokens do not fit a {grid[0]}x{grid[1]} patch grid with "
                f"{registers} registers; pass `blocks_path` to pick the ViT's own list of blocks"
            )
        return TokenLayout(num_cls=num_cls, num_registers=registers, grid=grid)

    def features(self, output) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(logits or None, pooled final features) from a forward's output."""
        if isinstance(output, torch.Tensor):  # a bare timm model: logits when it has a head, else features
            if getattr(self.module, "num_classes", 0):
                return output.float(), output.float()
            return None, output.float()
        logits = getattr(output, "logits", None)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            hidden = getattr(output, "last_hidden_state", None)
            pooled = hidden[:, 0] if hidden is not None else logits
        return (None if logits is None else logits.float()), pooled.float().reshape(pooled.shape[0], -1)


def refuse_prompt_for_vision(loaded: LoadedModel) -> None:
    """A vision model takes no text prompt: say so in one line (a dual encoder: scan its vision tower)."""
    if not is_vision_model(loaded):
        return
    if vision_module(loaded.model) is not loaded.model:
        raise MassactError(f"{loaded.name} is an image-text model; scan its vision tower with `images`")
    raise MassactError(f"{loaded.name} is a vision model and takes no text prompt; give it `images`")
