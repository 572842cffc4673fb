"""Attention capture through transformers' own attention dispatch.

Every transformers model built on the attention interface asks
`ALL_ATTENTION_FUNCTIONS` for its attention function by the name in
`config._attn_implementation`. `capture_attention` registers one more name whose
function calls the model's *own* eager attention (`eager_attention_forward` of the
model's modeling file, the function `attn_implementation="eager"` runs) and hands
its inputs and results (queries and keys after rotary embeddings, values, mask,
probabilities, output) to a callback, one attention call at a time. So rotary
embeddings, grouped-query heads, causal and sliding-window masks and logit
soft-capping are exactly the model's; nothing of its forward is copied. The
callback sees one block's attention map and drops it: nothing accumulates unless
the callback keeps it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from massact.capture.forward import input_device
from massact.errors import MassactError
from massact.models.dims import model_dims
from massact.models.memory import available_memory
from massact.models.structure import Structure

CAPTURE_NAME = "massact_capture"
WORKING_COPIES = 4  # scores, masked scores, probabilities, one float32 copy for the measures


@dataclass
class AttentionCall:
    """One attention call of one block, as the model's eager attention ran it."""

    block: int
    module: nn.Module
    query: torch.Tensor  # [batch, heads, queries, head_dim], after rotary embeddings
    key: torch.Tensor  # [batch, kv_heads, keys, head_dim]
    value: torch.Tensor  # [batch, kv_heads, keys, head_dim]
    mask: torch.Tensor | None  # additive [batch, 1, queries, keys] (None: every key visible)
    probs: torch.Tensor  # [batch, heads, queries, keys], the model's own probabilities
    output: torch.Tensor  # [batch, queries, heads, head_dim], what the attention function returns
    kwargs: dict = field(default_factory=dict)

    @property
    def groups(self) -> int:
        return self.query.shape[1] // self.key.shape[1]

    def visible(self) -> torch.Tensor:
        """Which keys each query may attend to: bool [batch, 1, queries, keys]."""
        b, _, t, s = self.probs.shape
        if self.mask is None:
            return torch.ones(b, 1, t, s, dtype=torch.bool, device=self.probs.device)
        mask = self.mask[..., :s]
        if mask.dtype == torch.bool:
            return mask.expand(b, 1, t, s)
        return (mask > torch.finfo(mask.dtype).min / 2).expand(b, 1, t, s)

    def values_per_head(self) -> torch.Tensor:
        """Values repeated for grouped-query heads: [batch, heads, keys, head_dim]."""
        return self.value.repeat_interleave(self.groups, dim=1)

    def logits(self) -> torch.Tensor:
        """Pre-softmax scores `scale * q.k` (soft-capped when the model caps), NaN where masked."""
        scaling = self.kwargs.get("scaling")
        if scaling is None:
            scaling = self.query.shape[-1] ** -0.5
        keys = self.key.repeat_interleave(self.groups, dim=1)
        scores = torch.matmul(self.query.float(), keys.float().transpose(-1, -2)) * scaling
        softcap = self.kwargs.get("softcap")
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        return scores.masked_fill(~self.visible(), float("nan"))


Handler = Callable[[AttentionCall], torch.Tensor | None]
_HANDLERS: dict[int, tuple[int, Handler]] = {}


def _eager_function(module: nn.Module) -> Callable:
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise MassactError(
            f"{type(module).__name__} ({type(module).__module__}) has no eager attention function "
            "(eager_attention_forward), so its attention probabilities cannot be captured"
        )
    return eager


def _capture_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: the model's eager attention, reported to the active handler."""
    output, probs = _eager_function(module)(module, query, key, value, attention_mask, **kwargs)
    entry = _HANDLERS.get(id(module))
    if entry is not None and probs is not None:
        block, handler = entry
        call = AttentionCall(block, module, query, key, value, attention_mask, probs, output, kwargs)
        replaced = handler(call)
        if replaced is not None:
            output = replaced
    return output, probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(CAPTURE_NAME, _capture_attention_forward)
    AttentionMaskInterface.register(CAPTURE_NAME, eager_mask)


def check_capturable(model: nn.Module) -> None:
    """Refuse, with the reason, a model whose attention does not go through transformers' attention interface."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise MassactError(
            f"{name} is not a transformers model, so massact cannot reach its attention probabilities; "
            "attention capture needs a model built on transformers' attention interface"
        )
    can_set = getattr(model, "_can_set_attn_implementation", lambda: True)
    if not can_set():
        raise MassactError(
            f"{name} does not dispatch its attention through transformers' attention interface "
            "(it cannot switch attn_implementation), so its attention probabilities cannot be captured"
        )


def attention_modules(structure: Structure) -> dict[int, int]:
    """id(module) -> block index, for every sub-module of every block."""
    return {id(sub): index for index, block in enumerate(structure.blocks) for sub in block.modules()}


@contextmanager
def capture_attention(model: nn.Module, structure: Structure, handler: Handler) -> Iterator[None]:
    """While inside, every attention call of `model` runs the eager path and is passed to `handler`.

    The handler may return a replacement for the attention output (same layout) to intervene.
    On exit the model's attention implementation is restored and nothing of massact is left on it.
    """
    check_capturable(model)
    _register()
    original = model.config._attn_implementation
    owners = attention_modules(structure)
    for module in model.modules():
        if id(module) in owners:
            _HANDLERS[id(module)] = (owners[id(module)], handler)
    try:
        try:
            model.set_attn_implementation(CAPTURE_NAME)
        except Exception as exc:
            raise MassactError(
                f"{type(model).__name__} cannot switch to a custom attention implementation "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}), "
                "so its attention probabilities cannot be captured"
            ) from None
        yield
    finally:
        for key in owners:
            _HANDLERS.pop(key, None)
        if model.config._attn_implementation != original:
            model.set_attn_implementation(original)


def num_heads(model: nn.Module) -> int | None:
    """Attention heads per block, from the model's config (None when it does not say)."""
    return model_dims(model).num_heads


def attention_map_bytes(heads: int, batch: int, tokens: int, logits: bool = False) -> int:
    """Working memory of one block's full attention map in float32, as the eager path and the measures need it."""
    copies = WORKING_COPIES + (2 if logits else 0)
    return batch * heads * tokens * tokens * 4 * copies + batch * tokens * tokens * 4


def check_memory(model: nn.Module, batch: int, tokens: int, logits: bool = False, limit: int | None = None) -> int:
    """Estimate one block's attention-map memory first; refuse when it exceeds what is available."""
    heads = num_heads(model) or 1
    copies = WORKING_COPIES + (2 if logits else 0)
    need = attention_map_bytes(heads, batch, tokens, logits)
    device = input_device(model)  # the run's device, also when the model runs block by block
    have = limit if limit is not None else available_memory(device)
    if need > have:
        gib = 2**30
        raise MassactError(
            f"{tokens} tokens need about {need / gib:.2f} GiB for one block's full attention map "
            f"({batch} x {heads} heads x {tokens}^2 x 4 bytes x {copies} working copies), "
            f"but only {have / gib:.2f} GiB is available on {device}; shorten the prompt or lower `seq_len`"
        )
    return need
