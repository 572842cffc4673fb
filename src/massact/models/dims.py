"""The sizes of a model, read from its config whatever the family calls them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_VOCAB = ("vocab_size", "n_vocab")


def _first(config: object, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class ModelDims:
    """Sizes of the text (or vision) transformer; None where the config does not say."""

    hidden_size: int | None
    num_layers: int | None
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None


def model_dims(model_or_config: nn.Module | object) -> ModelDims:
    """`ModelDims` of a model (or its config); multimodal configs are read through `get_text_config()`."""
    config = getattr(model_or_config, "config", model_or_config)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = _first(config, _HIDDEN)
    heads = _first(config, _HEADS)
    head_dim = _first(config, ("head_dim",)) or (hidden // heads if hidden and heads else None)
    return ModelDims(
        hidden_size=hidden,
        num_layers=_first(config, _LAYERS),
        num_heads=heads,
        num_kv_heads=_first(config, _KV_HEADS) or heads,
        head_dim=head_dim,
        vocab_size=_first(config, _VOCAB),
    )
