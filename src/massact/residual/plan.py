"""A rewrite as edits of single tensors: `Plan`, the same whether the model runs in memory or block by block.

Each rewrite (`transform`) appends to a parameter's chain of edits (`Edit`: tensor -> tensor) instead of
changing the tensor, and records what is not a tensor (norm epsilons, config keys, an untied LM head). The
plan is then used three ways, all through the same chains:

- `active()`: the model runs with the edits so far (a rescale measures its peaks on the rotated model; quant's
  `rotate` quantizes the rotated model); block by block each edit is applied as its block is read
  (`edited_parameters`);
- `commit()`: in memory, the edits are written into the model (a copy), which `save_pretrained` saves;
- `rewritten(key, tensor)`: block by block, each tensor of a block read from the checkpoint is rewritten
  before it is written to the output (`rewrite.save`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from massact.models.edits import edited_parameters, untied
from massact.residual import TOLERANCE as TOLERANCE  # the exactness check's bound
from massact.residual.layout import Layout, Site
from massact.residual.support import text_config

Edit = Callable[[torch.Tensor], torch.Tensor]
ConfigEdit = Callable[[object], None]


def on_part(index: tuple, edit: Edit) -> Edit:
    """`edit` applied to the part of a tensor `index` selects; the rest stays as it is."""
    if not index:
        return edit

    def apply(tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        out[index] = edit(tensor[index])
        return out

    return apply


def _chained(first: Edit, then: Edit) -> Edit:
    return lambda tensor: then(first(tensor))


class Plan:
    """The edits of a rewrite of `model`, per tensor in the order they were made, and what is not a tensor."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.edits: dict[str, list[Edit]] = {}  # state-dict key -> its edits, in order
        self.attributes: list[tuple[nn.Module, str, object]] = []  # (module, attribute, new value): norm epsilons
        self.config_edits: list[ConfigEdit] = []
        self.untied: str | None = None  # the LM head's key when it gets its own copy of the tied embedding

    def edit(self, site: Site, edit: Edit) -> None:
        """Append `edit` to the chain of the tensor `site` names (to its part, where the site has an index)."""
        self.edits.setdefault(site.path, []).append(on_part(site.index, edit))

    def rewritten(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (the original of `key`) with every edit of `key` applied."""
        for edit in self.edits.get(key, ()):
            tensor = edit(tensor)
        return tensor

    @torch.no_grad()
    def value(self, site: Site) -> torch.Tensor:
        """The tensor of `site` as the edits so far leave it (its weights must be readable: `materialized`)."""
        return self.rewritten(site.path, site.tensor.detach())

    def untie(self, layout: Layout) -> None:
        """Give the LM head its own copy of the tied embedding (its edits so far included), and say so in the config."""
        embedding = next((s.path for s in layout.embeddings if s.tensor is layout.head.tensor), None)
        self.untied = layout.head.path
        self.edits[self.untied] = list(self.edits.get(embedding, [])) if embedding else []

        def untied(config: object) -> None:
            for part in {id(c): c for c in (config, text_config(config))}.values():
                part.tie_word_embeddings = False

        self.config_edits.append(untied)
        layout.tied = False

    def _pairs(self) -> dict[int, tuple[nn.Parameter, Edit]]:
        """id(parameter) -> (the parameter, its chain of edits); an untied head resolves to its own parameter only
        inside `active`."""
        pairs: dict[int, tuple[nn.Parameter, Edit]] = {}
        for key, edits in self.edits.items():
            if not edits:
                continue
            parameter = self.model.get_parameter(key)
            if id(parameter) in pairs:
                raise AssertionError(f"two rewrites of one tensor under two names ({key})")
            pairs[id(parameter)] = (parameter, lambda tensor, key=key: self.rewritten(key, tensor))
        return pairs

    @contextmanager
    def active(self, then: Iterable[tuple[nn.Parameter, Edit]] = ()) -> Iterator[None]:
        """The model runs with the edits so far inside the block (in memory or block by block); restored after.

        A head the rewrite unties gets its own parameter for the while (`untied`). `then`: further edits, each
        applied after the plan's edits of the same parameter in the same swap (a simulated quantizer's rounding),
        so no parameter is held a third time.
        """
        with ExitStack() as stack:
            if self.untied is not None:
                owner, _, name = self.untied.rpartition(".")
                stack.enter_context(untied(self.model, self.model.get_submodule(owner), name))
            pairs = self._pairs()
            for parameter, edit in then:
                first = pairs.get(id(parameter))
                pairs[id(parameter)] = (parameter, edit if first is None else _chained(first[1], edit))
            stack.enter_context(edited_parameters(self.model, pairs.values()))
            yield

    @torch.no_grad()
    def commit(self) -> None:
        """Write every edit into the model itself (in memory: a copy that is then saved)."""
        if self.untied is not None:
            owner, _, name = self.untied.rpartition(".")
            module = self.model.get_submodule(owner)
            setattr(module, name, nn.Parameter(getattr(module, name).detach().clone()))
        for key, edits in self.edits.items():
            if edits:
                parameter = self.model.get_parameter(key)
                parameter.copy_(self.rewritten(key, parameter.detach()))
        for module, name, value in self.attributes:
            setattr(module, name, value)
        for edit in self.config_edits:
            edit(self.model.config)


def logits_change(original: torch.Tensor, rewritten: torch.Tensor) -> dict:
    """Largest |logit difference|, against the largest |logit| of the original."""
    diff = float((original - rewritten).abs().max())
    peak = float(original.abs().max())
    return {"max_abs_diff": diff, "max_abs": peak, "max_rel_diff": diff / peak if peak > 0 else diff}
