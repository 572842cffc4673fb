"""The KV cache as a list of kept tokens: evicting entries, moving rotary keys, quantizing entries.

Works on a transformers `DynamicCache`: each layer's `keys` / `values` are public tensors of shape
[batch, heads, tokens, head_dim]; evicting is slicing them along the token axis. Layers without softmax
attention (linear attention, state-space layers) keep a fixed-size state instead, with nothing per token:
they are carried along whole and never evicted.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, LinearAttentionCacheLayerMixin

from massact.capture.forward import input_device, run_forward
from massact.errors import MassactError
from massact.quant.schemes import quantize_heads


def cache_keyword(model: nn.Module) -> str:
    """The keyword the model's forward takes its KV cache by (`cache` in newer transformers)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def new_cache(model: nn.Module | None = None) -> DynamicCache:
    """An empty transformers `DynamicCache` of plain growing key/value layers (no sliding window of their own);
    the layers that `model`'s config makes fixed-size states (linear attention, state-space) keep their state layer."""
    config = getattr(model, "config", None)
    try:
        cache = DynamicCache(config=config) if config is not None and hasattr(config, "layer_types") else None
    except (AttributeError, KeyError, TypeError, ValueError):  # layer types transformers builds no cache for
        cache = None
    if cache is None or not any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in cache.layers):
        return DynamicCache()
    cache.layers = [
        layer if isinstance(layer, LinearAttentionCacheLayerMixin) else DynamicLayer() for layer in cache.layers
    ]
    return cache


def cache_layers(cache) -> list:
    """The cache's layers that hold tensors (every layer of a `DynamicCache` after the first forward)."""
    layers = [layer for layer in getattr(cache, "layers", []) if getattr(layer, "keys", None) is not None]
    if not layers:
        raise MassactError("the model wrote nothing into the KV cache; it needs a transformers DynamicCache")
    return layers


def drop_entry(cache, index: int, rotary: Rotary | None = None) -> None:
    """Remove cache entry `index` (its key and value) from every layer; with `rotary`, the keys behind it move
    one position down (cache positions)."""
    for layer in cache_layers(cache):
        behind = layer.keys[:, :, index + 1 :]
        if rotary is not None:
            behind = rotary.rotate(behind, -1)
        layer.keys = torch.cat([layer.keys[:, :, :index], behind], dim=2)
        layer.values = torch.cat([layer.values[:, :, :index], layer.values[:, :, index + 1 :]], dim=2)


class Rotary:
    """Moves cached rotary keys to new positions: R(p - d) k = R(-d) R(p) k, for every layer's keys.

    Keys are rotated as transformers' `rotate_half` convention does (the first 2 x len(inv_freq) dims of
    each head, pairs (i, i + half)); `check` proves on the model itself that this reproduces keys computed
    at the new positions, and refuses otherwise.
    """

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq.detach().double().cpu()
        self.dims = 2 * self.inv_freq.numel()
        self._turns: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _cos_sin(self, delta: torch.Tensor | int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation by `delta` [tokens or 1, head rotary dims], float32 (cached for ints)."""
        key = (delta, device) if isinstance(delta, int) else None
        if key is not None and key in self._turns:
            return self._turns[key]
        angles = torch.as_tensor(delta, dtype=torch.float64).reshape(-1, 1) * self.inv_freq[None]
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(device, torch.float32)
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(device, torch.float32)
        if key is not None:
            self._turns[key] = (cos, sin)
        return cos, sin

    @classmethod
    def of(cls, model: nn.Module) -> Rotary:
        """The model's rotary frequencies; a one-line refusal when it has none or several kinds."""
        found = [(name, buf) for name, buf in model.named_buffers() if name.split(".")[-1] == "inv_freq"]
        if not found:
            raise MassactError(
                "`positions='cache'`: this model has no rotary position embedding (its positions are added to the "
                "input), so cached keys cannot be moved to new positions; use `positions='original'`"
            )
        first = found[0][1].detach().double().cpu()
        if any(buf.shape != first.shape or not torch.equal(buf.detach().double().cpu(), first) for _, buf in found):
            raise MassactError(
                "`positions='cache'`: this model's layers use different rotary frequencies, which cannot be "
                "re-rotated with one rule; use `positions='original'`"
            )
        for module in model.modules():
            rope_type = str(getattr(module, "rope_type", "default"))
            if "dynamic" in rope_type or "longrope" in rope_type:
                raise MassactError(
                    f"`positions='cache'`: rotary scaling {rope_type!r} changes the frequencies with the length, "
                    "so cached keys cannot be re-rotated exactly; use `positions='original'`"
                )
        return cls(first)

    def rotate(self, keys: torch.Tensor, delta: torch.Tensor | int) -> torch.Tensor:
        """`keys` [batch, heads, tokens, head_dim] moved by `delta` positions (an int or one per token)."""
        if keys.shape[-1] < self.dims:
            raise MassactError(f"rotary frequencies cover {self.dims} dims but the keys have {keys.shape[-1]}")
        cos, sin = self._cos_sin(delta, keys.device)
        rot, rest = keys[..., : self.dims].float(), keys[..., self.dims :]
        half = self.dims // 2
        turned = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        moved = (rot * cos + turned * sin).to(keys.dtype)
        return torch.cat([moved, rest], dim=-1) if rest.shape[-1] else moved

    def check(self, model: nn.Module, ids: torch.Tensor, probe: int = 4, delta: int = 5) -> float:
        """Keys of `probe` tokens computed at positions delta.. and moved back by `delta` must equal the keys
        computed at 0.. (to float tolerance); a one-line refusal otherwise. Returns the largest relative error."""
        device = input_device(model)
        sample = ids.reshape(1, -1)[:, :probe].to(device)
        keys = []
        for start in (0, delta):
            cache = new_cache(model)
            positions = torch.arange(start, start + sample.shape[1], device=device).reshape(1, -1)
            run_forward(model, sample, position_ids=positions, use_cache=True, **{cache_keyword(model): cache})
            keys.append([layer.keys for layer in cache_layers(cache)])
        worst = 0.0
        for at_zero, moved in zip(*keys):
            back = self.rotate(moved, -delta).float()
            scale = float(at_zero.float().abs().max().clamp_min(1e-12))
            worst = max(worst, float((back - at_zero.float()).abs().max()) / scale)
        dtype = keys[0][0].dtype
        tolerance = 1e-4 if dtype in (torch.float32, torch.float64) else 8 * torch.finfo(dtype).eps
        if not worst <= tolerance:
            raise MassactError(
                f"`positions='cache'`: moving this model's cached keys by rotation does not reproduce keys computed "
                f"at the new positions (relative error {worst:.2g}); use `positions='original'`"
            )
        return worst


def quantize_symmetric(x: torch.Tensor, bits: int) -> torch.Tensor:
    """`x` [..., head_dim] fake-quantized to `bits` bits, one absmax scale per token and head (massact.quant's
    KV-cache quantizer, applied to cache entries)."""
    return quantize_heads(x, bits, x.shape[-1])


def read_entry(cache, index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A copy of cache entry `index` (key and value of every layer)."""
    return [(layer.keys[:, :, index].clone(), layer.values[:, :, index].clone()) for layer in cache_layers(cache)]


def write_entry(cache, index: int, entry: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put a copy made by `read_entry` back at cache entry `index`."""
    for layer, (key, value) in zip(cache_layers(cache), entry):
        layer.keys[:, :, index] = key
        layer.values[:, :, index] = value


def quantize_entry(cache, index: int, bits: int) -> None:
    """Replace cache entry `index` (key and value, every layer) by its `bits`-bit quantized version."""
    for layer in cache_layers(cache):
        layer.keys[:, :, index] = quantize_symmetric(layer.keys[:, :, index], bits)
        layer.values[:, :, index] = quantize_symmetric(layer.values[:, :, index], bits)
