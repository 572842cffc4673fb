"""Which weights touch the residual stream, found from one short forward pass (no per-model code).

Every exact rewrite of the residual stream needs the same map: the embeddings that start it, the
parameters that write into it (each sub-layer's output projection, every expert's, a sandwich
post-norm), the parameters that read a norm of it (q/k/v, gate/up, routers, the LM head), and the
norms themselves. `find_layout` records one forward of a few tokens with hooks on every module and
reads the map off the recorded tensors:

- a norm child of a block whose input is a sub-layer's output is that sub-layer's post-norm (Gemma 2/3);
  any other norm child reads the residual stream and belongs to the next sub-layer called;
- a block whose output is a norm's output normalises the residual itself (post-norm, as BERT or OPT-350m);
- a sub-layer's writer is the last Linear called with the hidden size as output, per module holding
  Linears (so every expert of a mixture has its own);
- fused experts (3-D parameters, stored [expert, out, in] as Mixtral or [expert, in, out] as GPT-OSS) are placed
  on their module's recorded call: which parameter axis of hidden size writes the output, which reads the input;
- a norm inside attention (q/k norms) reads the Linear whose output equals its input;
- the final norm is the norm whose output is the LM head's input.

Block by block, the probe is one pass of the block-by-block runner, and the few checks that run a module on
its own weights (fused experts, a norm's form) read those weights first (`materialized`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from massact.capture.forward import run_forward
from massact.capture.hooks import HookSet, output_tensor
from massact.errors import MassactError
from massact.models.offload import materialized
from massact.models.structure import find_structure, in_features, is_linear, out_features

_UP = re.compile(r"(^|_)(up|w3)(_proj)?$")
_EPS = ("variance_epsilon", "eps")
Call = tuple[tuple, dict]  # a module's recorded call: (args, kwargs)


@dataclass(frozen=True)
class Site:
    """One parameter that touches the residual stream; `axis` is its axis of hidden size."""

    module: nn.Module
    name: str
    axis: int
    path: str
    index: tuple = ()  # a part of the tensor (a view: slices only), e.g. the up half of a fused gate_up

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.name)

    def part(self) -> torch.Tensor:
        """The tensor, or the part of it `index` selects, as a view that in-place operations write through."""
        return self.tensor[self.index] if self.index else self.tensor


@dataclass
class Sublayer:
    """Attention or MLP of one block: the norm it reads, its post-norm, what writes and what reads."""

    kind: str  # "attention" or "mlp"
    block: int
    path: str
    reader: str | None  # the pre-norm whose output it reads
    post_norm: str | None  # a sandwich norm between its output and the residual (Gemma 2/3)
    writers: list[Site]  # parameters whose output is the write (weights and biases)
    scaled: list[Site]  # what a rescale multiplies: the up projection in place of the writer where gated
    readers: list[Site]  # parameters that read the pre-norm's output
    unplaced: list[str] = field(default_factory=list)  # fused expert parameters the probe could not place


@dataclass
class Layout:
    """The residual stream's readers, writers and norms in one model."""

    hidden: int
    embeddings: list[Site]
    head: Site | None
    tied: bool
    final_norm: str | None
    sublayers: list[Sublayer]
    norms: dict[str, nn.Module]
    forms: dict[str, str]  # norm path -> "w" (gain w) or "1+w" (gain 1 + w, Gemma)
    centred: dict[str, bool]  # norm path -> subtracts the mean (LayerNorm)
    qk_sources: list[Site]  # Linears whose output a norm inside attention reads
    post_norm_blocks: list[int] = field(default_factory=list)
    unknown_norms: list[str] = field(default_factory=list)
    unprobed_norms: list[str] = field(default_factory=list)  # norms whose forward takes more than the hidden states

    @property
    def sandwich(self) -> bool:
        return any(s.post_norm for s in self.sublayers)


def is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None), torch.Tensor)


def norm_eps(module: nn.Module) -> tuple[str, float] | None:
    """The attribute holding a norm's epsilon and its value."""
    for name in _EPS:
        value = getattr(module, name, None)
        if isinstance(value, float):
            return name, value
    return None


class _Probe(HookSet):
    """Every module's first input and output, and the order in which modules were first called."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.names = {id(m): n for n, m in model.named_modules() if n}
        self.order: dict[str, int] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, Call] = {}  # fused experts' first call, to place their parameters

    def pre_hooks(self):
        return [(m, self._pre) for n, m in self.model.named_modules() if n]

    def forward_hooks(self):
        return [(m, self._post) for n, m in self.model.named_modules() if n]

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.names[id(module)]
        if name in self.order:
            return
        self.order[name] = len(self.order)
        if _is_experts(module):
            self.calls[name] = (_detached(args), _detached(kwargs))
        first = _first_input((args, kwargs))
        if isinstance(first, torch.Tensor):
            self.inputs[name] = first.detach()

    def _post(self, module: nn.Module, args: tuple, output: object) -> None:
        name = self.names[id(module)]
        if name not in self.outputs:
            with suppress(TypeError):  # outputs with no hidden-state tensor are not needed
                self.outputs[name] = output_tensor(output).detach()


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.numel() == b.numel() and torch.equal(a.reshape(-1), b.reshape(-1))


def _same_values(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """The same values in any order (a reshaped and transposed copy, as q/k before their norms)."""
    return (
        a is not None
        and b is not None
        and a.numel() == b.numel()
        and torch.equal(a.reshape(-1).sort().values, b.reshape(-1).sort().values)
    )


def _weight_site(module: nn.Module, path: str, reads: bool) -> Site:
    """The weight of a Linear or Conv1D, with its hidden axis as reader (input) or writer (output)."""
    if isinstance(module, Conv1D):
        return Site(module, "weight", 0 if reads else 1, f"{path}.weight")
    return Site(module, "weight", 1 if reads else 0, f"{path}.weight")


def _bias(module: nn.Module, path: str) -> list[Site]:
    return [Site(module, "bias", 0, f"{path}.bias")] if getattr(module, "bias", None) is not None else []


def _detached(values):
    """`values` (a tuple or dict of call arguments) with every tensor detached."""
    if isinstance(values, dict):
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
    return tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in values)


def _is_experts(module: nn.Module) -> bool:
    """Fused experts: a module holding 3-D parameters ([expert, ., .]) of its own in place of Linears."""
    return any(p.dim() == 3 for p in module.parameters(recurse=False))


def _first_input(call: Call) -> object:
    args, kwargs = call
    return args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))


def _rerun(module: nn.Module, call: Call, x: torch.Tensor | None = None) -> torch.Tensor:
    """`module`'s output on its recorded call (its first input replaced by `x`), in float32."""
    args, kwargs = call
    if x is not None and args:
        args = (x, *args[1:])
    elif x is not None:
        kwargs = kwargs | {"hidden_states" if "hidden_states" in kwargs else "input": x}
    return output_tensor(module(*args, **kwargs)).float()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()) + 1e-12)


@contextmanager
def _times(sites: list[Site], factor: torch.Tensor | float) -> Iterator[None]:
    """Each site's part multiplied by `factor` (a number, or a vector along the site's axis) inside the block."""
    saved = [s.part().clone() for s in sites]
    try:
        for site in sites:
            part = site.part()
            if isinstance(factor, torch.Tensor):
                shape = [-1 if i == site.axis else 1 for i in range(part.dim())]
                part.mul_(factor.to(part).view(shape))
            else:
                part.mul_(factor)
        yield
    finally:
        for site, old in zip(sites, saved, strict=True):
            site.part().copy_(old)


def _experts(
    model: nn.Module, module: nn.Module, path: str, hidden: int, call: Call | None
) -> tuple[list[Site], list[Site], list[Site], list[str]]:
    """(readers, writers, what a rescale multiplies, unplaced) of one fused experts module, placed on its call.

    Every 3-D parameter axis of hidden size is tried with a vector `d` of powers of two (exact in floating
    point): a writer's axis scaled by `d` (its `<name>_bias` with it) scales the output's channels by `d`; the
    readers' axes scaled by `d` with the input divided by `d` leave the output as it was. So the experts are
    placed however they are stored, [expert, out, in] (Mixtral) or [expert, in, out] (GPT-OSS), even when the
    intermediate size equals the hidden size; `unplaced` names the parameters of hidden size neither test placed.
    """
    params = dict(module.named_parameters(recurse=False))
    axes = {n: [a for a in (1, 2) if p.shape[a] == hidden] for n, p in params.items() if p.dim() == 3}
    axes = {n: a for n, a in axes.items() if a}
    x = _first_input(call) if call is not None else None
    if not isinstance(x, torch.Tensor):  # never called: nothing to place it on
        return [], [], [], [_full(path, n) for n in axes]

    def site(name: str, axis: int) -> Site:
        return Site(module, name, axis, _full(path, name))

    def bias(name: str) -> list[Site]:
        b = params.get(f"{name}_bias")
        return [site(f"{name}_bias", 1)] if b is not None and b.dim() == 2 and b.shape[1] == hidden else []

    d = 2.0 ** torch.randint(-2, 3, (hidden,), generator=torch.Generator().manual_seed(0)).to(x)
    writers: list[Site] = []
    readers: list[Site] = []
    scaled: list[Site] = []
    with torch.inference_mode(), materialized(model, [module]):
        before = _rerun(module, call)
        for name, options in axes.items():
            for axis in options:
                with _times([site(name, axis), *bias(name)], d):
                    if _close(_rerun(module, call), before * d.float()):
                        writers.append(site(name, axis))
                        break
        written = {w.name for w in writers}
        rest = {n: a for n, a in axes.items() if n not in written}
        for choice in itertools.product(*rest.values()) if rest else ():
            sites = [site(n, a) for n, a in zip(rest, choice, strict=True)]
            with _times(sites, d):
                if _close(_rerun(module, call, x / d), before):
                    readers = sites
                    break
        for writer in writers:
            up = _fused_up(module, path, writer, bias(writer.name), readers, call, before)
            scaled += up or [writer, *bias(writer.name)]
    unplaced = [] if readers or not rest else [_full(path, n) for n in rest]
    return readers, [s for w in writers for s in (w, *bias(w.name))], scaled, unplaced


def _fused(
    model: nn.Module, sub: nn.Module, path: str, hidden: int, calls: dict[str, Call]
) -> tuple[list[Site], list[Site], list[Site], list[str]]:
    """(readers, writers, what a rescale multiplies, unplaced) of every fused experts module inside `sub`."""
    found: tuple[list, list, list, list] = ([], [], [], [])
    for name, module in sub.named_modules():
        if _is_experts(module):
            full = _full(path, name)
            for into, more in zip(found, _experts(model, module, full, hidden, calls.get(full)), strict=True):
                into += more
    return found


def _fused_up(
    module: nn.Module, path: str, writer: Site, bias: list[Site], readers: list[Site], call: Call, before: torch.Tensor
) -> list[Site]:
    """The part of a fused reader (the up projection) whose scaling, with the writer's bias, scales the module's
    output by the same factor, so a rescale shrinks the hidden product (the writer's input) too: the second half or
    every odd row of a fused gate_up, or a whole up; [] when none does (a clamp, GPT-OSS's `(up + 1) * glu`)."""
    inter = writer.tensor.shape[3 - writer.axis]
    for reader in readers:
        out = 3 - reader.axis  # the reader's output axis
        size = reader.tensor.shape[out]
        parts = [slice(inter, None), slice(1, None, 2)] if size == 2 * inter else [slice(None)] * (size == inter)
        for part in parts:
            sites = [Site(module, reader.name, reader.axis, reader.path, (slice(None),) * out + (part,))]
            if isinstance(getattr(module, f"{reader.name}_bias", None), torch.Tensor):
                name = f"{reader.name}_bias"
                sites.append(Site(module, name, out - 1, _full(path, name), (slice(None), part)))
            with _times(sites + bias, 0.5):
                if _close(_rerun(module, call), 0.5 * before):
                    return sites + bias
    return []


def _writers(sub: nn.Module, path: str, order: dict[str, int], hidden: int) -> tuple[list[Site], list[Site]]:
    """(writers, what a rescale multiplies) among the Linears inside one sub-layer `sub`."""
    parents: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in sub.named_modules():
        if is_linear(module) and out_features(module) == hidden:
            parent, _, child = name.rpartition(".")
            parents.setdefault(parent, []).append((child, module))
    learned: dict[type, str] = {}  # writer child name per parent class, for experts the probe did not route to
    for parent, children in parents.items():
        called = [(order[_full(path, parent, c)], c) for c, _ in children if _full(path, parent, c) in order]
        if called:
            learned[type(sub.get_submodule(parent) if parent else sub)] = max(called)[1]
    writers: list[Site] = []
    scaled: list[Site] = []
    for parent in parents:
        holder = sub.get_submodule(parent) if parent else sub
        name = learned.get(type(holder))
        if name is None:
            continue
        writer = holder.get_submodule(name)
        full = _full(path, parent, name)
        writers += [_weight_site(writer, full, reads=False), *_bias(writer, full)]
        up = next(
            (
                (c, m)
                for c, m in holder.named_children()
                if _UP.search(c) and is_linear(m) and out_features(m) == in_features(writer)
            ),
            None,
        )
        if up is not None:  # gated MLP: scaling `up` scales the hidden product and the write
            up_path = _full(path, parent, up[0])
            scaled += [Site(up[1], "weight", 1 if isinstance(up[1], Conv1D) else 0, f"{up_path}.weight")]
            scaled += [Site(up[1], "bias", 0, f"{up_path}.bias")] if up[1].bias is not None else []
            scaled += _bias(writer, full)
        else:
            scaled += [_weight_site(writer, full, reads=False), *_bias(writer, full)]
    return writers, scaled


def _full(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _readers(sub: nn.Module, path: str, writers: list[Site], hidden: int) -> list[Site]:
    """Parameters inside a sub-layer that read the hidden size: Linears and routers (fused experts: `_experts`)."""
    written = {id(s.tensor) for s in writers}
    sites = []
    for name, module in sub.named_modules():
        if is_norm(module) or _is_experts(module):
            continue
        full = _full(path, name)
        if is_linear(module):
            if id(module.weight) not in written and in_features(module) == hidden:
                sites.append(_weight_site(module, full, reads=True))
            continue
        for pname, param in module.named_parameters(recurse=False):
            if param.dim() >= 2 and param.shape[-1] == hidden and id(param) not in written:
                sites.append(Site(module, pname, param.dim() - 1, _full(full, pname)))
    return sites


@torch.no_grad()
def _form(norm: nn.Module) -> tuple[str, bool] | None:
    """("w" or "1+w", subtracts the mean) of a norm, probed on its own forward; None for a norm whose forward
    takes more than the hidden states (a gated norm)."""
    width = norm.weight.shape[-1]
    x = torch.randn(2, width, generator=torch.Generator().manual_seed(0)).to(norm.weight)
    saved = norm.weight.detach().clone()
    try:
        norm.weight.zero_()
        zero = norm(x)
    except TypeError:
        return None
    finally:
        norm.weight.copy_(saved)
    bias = getattr(norm, "bias", None)
    expected = torch.zeros_like(zero) if bias is None else bias.detach().expand_as(zero)
    form = "w" if torch.allclose(zero, expected) else "1+w"
    centred = torch.allclose(norm(x + 3.0), norm(x), atol=1e-4, rtol=1e-4)
    return form, centred


def find_layout(model: nn.Module, ids: torch.Tensor, blocks_path: str | None = None) -> Layout:
    """The residual stream's map of `model`, from one forward on `ids` [1, T]."""
    structure = find_structure(model, blocks_path)
    embed = model.get_input_embeddings()
    hidden = int(embed.embedding_dim)
    probe = _Probe(model)
    with torch.inference_mode(), probe:
        run_forward(model, ids)
    order, inputs, outputs = probe.order, probe.inputs, probe.outputs
    names = {id(m): n for n, m in model.named_modules()}
    norms = {n: m for n, m in model.named_modules() if is_norm(m)}
    sublayers: list[Sublayer] = []
    post_blocks: list[int] = []
    known: set[str] = set()
    qk_sources: list[Site] = []
    for index, block in enumerate(structure.blocks):
        bpath = structure.block_path(index)
        subs = [
            (kind, structure.attn_path(index) if kind == "attention" else structure.mlp_path(index))
            for kind in ("attention", "mlp")
        ]
        subs = [(k, p) for k, p in subs if p is not None and p in order]
        children = sorted(
            (order[f"{bpath}.{c}"], f"{bpath}.{c}")
            for c, m in block.named_children()
            if is_norm(m) and f"{bpath}.{c}" in order
        )
        if any(_same(outputs.get(p), outputs.get(bpath)) for _, p in children):
            post_blocks.append(index)
            continue
        readers: dict[str, str] = {}
        posts: dict[str, str] = {}
        for when, npath in children:
            source = next((p for _, p in subs if _same(inputs.get(npath), outputs.get(p))), None)
            if source is not None:
                posts[source] = npath
                continue
            following = [(order[p], p) for _, p in subs if order[p] > when]
            if following:
                readers.setdefault(min(following)[1], npath)
        for kind, spath in subs:
            module = model.get_submodule(spath)
            writers, scaled = _writers(module, spath, order, hidden)
            fused_readers, fused_writers, fused_scaled, unplaced = _fused(model, module, spath, hidden, probe.calls)
            sublayers.append(
                Sublayer(
                    kind=kind,
                    block=index,
                    path=spath,
                    reader=readers.get(spath),
                    post_norm=posts.get(spath),
                    writers=writers + fused_writers,
                    scaled=scaled + fused_scaled,
                    readers=_readers(module, spath, writers, hidden) + fused_readers,
                    unplaced=unplaced,
                )
            )
            known.update(p for p in (readers.get(spath), posts.get(spath)) if p)
            if kind == "attention":
                qk_sources += _qk_sources(module, spath, norms, inputs, outputs, known)
    head_module = model.get_output_embeddings()
    head = None
    final_norm = None
    if head_module is not None:
        hpath = names[id(head_module)]
        head = Site(head_module, "weight", 1, f"{hpath}.weight")
        final_norm = next((n for n in norms if _same(outputs.get(n), inputs.get(hpath)) and n not in known), None)
        if final_norm:
            known.add(final_norm)
    blocks_module = model.get_submodule(structure.blocks_path)
    inside = {id(m) for m in blocks_module.modules()}
    embeddings = [
        Site(m, "weight", 1, f"{n}.weight")
        for n, m in model.named_modules()
        if isinstance(m, nn.Embedding) and id(m) not in inside and m.embedding_dim == hidden and n in order
    ]
    forms = {}
    centred = {}
    unprobed = []
    with materialized(model, norms.values()):
        for name, norm in norms.items():
            probed = _form(norm)
            unprobed += [] if probed else [name]
            forms[name], centred[name] = probed or ("w", False)
    tied = head is not None and head.tensor is embed.weight
    return Layout(
        hidden=hidden,
        embeddings=embeddings,
        head=head,
        tied=tied,
        final_norm=final_norm,
        sublayers=sublayers,
        norms=norms,
        forms=forms,
        centred=centred,
        qk_sources=qk_sources,
        post_norm_blocks=post_blocks,
        unknown_norms=[n for n in norms if n not in known and n in order],
        unprobed_norms=unprobed,
    )


def _qk_sources(
    attn: nn.Module,
    apath: str,
    norms: dict[str, nn.Module],
    inputs: dict[str, torch.Tensor],
    outputs: dict[str, torch.Tensor],
    known: set[str],
) -> list[Site]:
    """The Linears whose outputs the norms inside an attention module read (q_norm <- q_proj, ...)."""
    sites = []
    linears = [(_full(apath, n), m) for n, m in attn.named_modules() if is_linear(m)]
    for npath in [n for n in norms if n.startswith(apath + ".")]:
        for lpath, linear in linears:
            if _same_values(inputs.get(npath), outputs.get(lpath)):
                sites += [_weight_site(linear, lpath, reads=False), *_bias(linear, lpath)]
                known.add(npath)
                break
    return sites


def check_known(layout: Layout, what: str) -> None:
    """Refuse, in one line, a model whose norms the rewrite cannot account for."""
    if layout.post_norm_blocks:
        raise MassactError(
            f"{what}: the blocks normalise the residual stream after adding to it (post-norm, block "
            f"{layout.post_norm_blocks[0]}), so it is not scale-invariant; the rewrite would not be exact"
        )
    if layout.unprobed_norms:
        raise MassactError(
            f"{what}: the norm {layout.unprobed_norms[0]} takes more than the hidden states (a gated norm), so the "
            "rewrite cannot account for it"
        )
    if layout.unknown_norms:
        raise MassactError(
            f"{what}: the norm {layout.unknown_norms[0]} reads neither the residual stream nor a sub-layer's "
            "output, so the rewrite cannot keep it exact"
        )
    unplaced = [p for sub in layout.sublayers for p in sub.unplaced]
    if unplaced:
        raise MassactError(
            f"{what}: the fused expert parameter {unplaced[0]} has an axis of the hidden size but neither reads nor "
            "writes the residual stream the way a Linear would (probed on its recorded call), so the rewrite cannot "
            "keep it exact"
        )
    missing = [n for n, m in layout.norms.items() if norm_eps(m) is None]
    if missing:
        raise MassactError(f"{what}: the norm {missing[0]} keeps no epsilon attribute (eps), so it cannot be rescaled")
