"""`trace`: scan a prompt, then trace the writer of each main massive site."""

from __future__ import annotations

from dataclasses import dataclass, field

from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.scan import DEFAULT_PROMPT, scan
from massact.trace.writer import SiteTrace, _hidden_size, run_capture, trace_site


@dataclass
class TraceResult:
    """The traced sites of one prompt, plus (when run) their verification by intervention."""

    model: str
    prompt: str
    tokens: list[str]
    kinds: list[str]
    thresholds: Thresholds
    sites: list[SiteTrace]
    massive_sites: list[dict]
    verification: dict | None = None
    quant_risk: list[dict] | None = None
    input_ids: list[int] = field(default_factory=list)

    def entries(self) -> list[dict]:
        """Every reported weight entry, flat, with its site."""
        rows = []
        for site in self.sites:
            for rank, entry in enumerate(site.entries, 1):
                rows.append({"site": {"token": site.token, "dim": site.dim}, "rank": rank, **entry.__dict__})
        return rows

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "tokens": self.tokens,
            "token_kinds": self.kinds,
            "thresholds": {"abs": self.thresholds.abs, "ratio": self.thresholds.ratio},
            "massive_sites": self.massive_sites,
            "sites": [site.to_json() for site in self.sites],
            "entries": self.entries(),
            "verification": self.verification,
            "quant_risk": self.quant_risk,
        }


def _choose_sites(summary_sites: list[dict], massive: list, token: int | None, dim: int | None, max_sites: int):
    if dim is None:
        if token is not None:
            summary_sites = [s for s in summary_sites if s["token"] == token]
        return [(s["token"], s["dim"]) for s in summary_sites[:max_sites]]
    if token is None:
        hits = sorted((m for m in massive if m.dim == dim), key=lambda m: -abs(m.value))
        if not hits:
            raise MassactError(f"--dim {dim} carries no massive activation on this prompt; give --token POSITION too")
        token = hits[0].token
    return [(token, dim)]


def trace(
    loaded: LoadedModel,
    prompt: str = DEFAULT_PROMPT,
    *,
    thresholds: Thresholds | None = None,
    max_sites: int = 4,
    top: int = 10,
    share: float = 0.9,
    token: int | None = None,
    dim: int | None = None,
    block: int | None = None,
    add_special_tokens: bool = True,
    blocks_path: str | None = None,
) -> TraceResult:
    """Find the main massive sites of `prompt` (or the given `token`/`dim`) and trace who writes each."""
    if not 0 < share <= 1:
        raise MassactError(f"--share {share}: must be in (0, 1], e.g. 0.9")
    found = scan(
        loaded, prompt, thresholds=thresholds, top_k=1, add_special_tokens=add_special_tokens, blocks_path=blocks_path
    )
    tokens, kinds = found.tokens, found.kinds
    if token is not None and not 0 <= token < len(tokens):
        raise MassactError(f"--token {token} is out of range; the prompt has tokens 0..{len(tokens) - 1}")
    if dim is not None and not 0 <= dim < found.hidden_size:
        raise MassactError(f"--dim {dim} is out of range; the hidden size is {found.hidden_size}")
    chosen = _choose_sites(found.summary["sites"], found.massive, token, dim, max_sites)
    result = TraceResult(
        model=loaded.name,
        prompt=prompt,
        tokens=tokens,
        kinds=kinds,
        thresholds=found.thresholds,
        sites=[],
        massive_sites=found.summary["sites"],
    )
    if not chosen:
        return result
    input_ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)["input_ids"]
    result.input_ids = input_ids[0].tolist()
    structure = found.structure
    hidden_size = _hidden_size(loaded.model, structure, input_ids)
    capture = run_capture(loaded.model, structure, input_ids, sorted({t for t, _ in chosen}))
    result.sites = [
        trace_site(
            capture,
            structure,
            hidden_size,
            t,
            d,
            token_text=tokens[t],
            token_kind=kinds[t],
            block=block,
            top=top,
            share=share,
        )
        for t, d in chosen
    ]
    return result
