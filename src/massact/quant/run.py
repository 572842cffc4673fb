"""`massact.quant.run`: perplexity under each (scheme, strategy), the best strategy, and per-block sensitivity."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch

from massact.capture.peaks import BlockPeaks
from massact.data.corpus import load_windows, prefix_tokens
from massact.errors import MassactError
from massact.fakequant import qmax
from massact.format import fmt_ppl
from massact.models.loading import LoadedModel
from massact.models.structure import find_structure
from massact.perplexity import PerplexityResult, evaluate_perplexity
from massact.precision import Precision
from massact.progress import say, steps
from massact.quant.calibrate import Calibration, SuperWeight, calibrate, calibration_text, super_weights_from_trace
from massact.quant.config import QuantConfig
from massact.quant.result import QuantResult
from massact.quant.rotate import inexact
from massact.quant.rotate import refused as rotate_refused
from massact.quant.schemes import Scheme, parse_scheme
from massact.quant.seeds import summarize
from massact.quant.simulate import quant_context, unquantized_weights
from massact.quant.strategies import BEST, candidates, parts
from massact.residual.support import REWRITES, refusals
from massact.tasks import evaluate as evaluate_tasks
from massact.validate import at_least, check_context


@dataclass
class QuantInputs:
    """Evaluated windows and held-out calibration windows (disjoint) of one corpus."""

    windows: torch.Tensor  # [N, L]
    calibration: torch.Tensor  # [M, L]
    corpus: str = "corpus"  # the corpus's name, for the report
    seed: int = 0  # the seed the windows were drawn with
    prefix_tokens: list[str] = field(default_factory=list)  # what each window starts with, as the tokenizer does
    super_weights: list[SuperWeight] | None = None  # for keep-super-weights; None: `run` traces them
    draws: list[QuantInputs] = field(default_factory=list)  # the same sizes drawn with further seeds (--seeds)

    def __post_init__(self) -> None:
        if self.windows.dim() != 2 or self.windows.shape[0] < 1 or self.windows.shape[1] < 2:
            raise MassactError(f"quantization needs windows [N >= 1, L >= 2], got {tuple(self.windows.shape)}")
        if self.calibration.dim() != 2 or self.calibration.shape[0] < 1:
            shape = tuple(self.calibration.shape)
            raise MassactError(f"`calibration` must hold at least one window [M >= 1, L], got {shape}")

    @property
    def prefix_len(self) -> int:
        return len(self.prefix_tokens)

    def describe(self) -> dict:
        """What a result built on these windows records of them (`quant.result.OnWindows`)."""
        return {
            "corpus": self.corpus,
            "windows": list(self.windows.shape),
            "calibration_windows": list(self.calibration.shape),
            "seed": self.seed,
            "prefix_tokens": self.prefix_tokens,
        }


def check_counts(samples: int, seq_len: int, calib_samples: int, seeds: int = 1) -> None:
    """Refuse window counts `load_inputs` cannot draw; cheap, so a command checks them before the model loads."""
    counts = (("samples", samples, 1), ("seq_len", seq_len, 2), ("calib_samples", calib_samples, 1))
    for name, value, least in (*counts, ("seeds", seeds, 1)):
        at_least(name, value, least)


def load_inputs(
    loaded: LoadedModel, corpus: str, samples: int, seq_len: int, calib_samples: int, seed: int = 0, seeds: int = 1
) -> QuantInputs:
    """`samples` windows to evaluate (exactly `load_windows(tok, corpus, samples, seq_len, seed)`) and
    `calib_samples` further windows of the same draw, never evaluated, for calibration; with `seeds` > 1,
    the same drawn again with seeds `seed + 1, ...` in `draws`."""
    check_counts(samples, seq_len, calib_samples, seeds)
    check_context("seq_len", seq_len, loaded.context_length)
    prefix = prefix_tokens(loaded.tokenizer)
    inputs = []
    for draw in range(seed, seed + seeds):
        drawn = load_windows(loaded.tokenizer, corpus, samples + calib_samples, seq_len, seed=draw)
        inputs.append(
            QuantInputs(
                windows=drawn[:samples], calibration=drawn[samples:], corpus=corpus, seed=draw, prefix_tokens=prefix
            )
        )
    inputs[0].draws = inputs[1:]
    return inputs[0]


class _Evaluator:
    """Perplexity under (scheme, strategy) on given windows, with the static scales each strategy needs."""

    def __init__(self, loaded: LoadedModel, inputs: QuantInputs, config: QuantConfig, calib: Calibration) -> None:
        self.loaded, self.inputs, self.config, self.calib = loaded, inputs, config, calib
        self._maxima: dict[str, dict[str, torch.Tensor]] = {}

    def static_scales(self, scheme: Scheme, strategy: str) -> dict[str, torch.Tensor] | None:
        if scheme.act_bits is None or scheme.granularity != "static":
            return None
        if strategy not in self._maxima:
            record: dict[str, torch.Tensor] = {}
            with quant_context(self.loaded, scheme, strategy, self.calib, **self._options(), record=record):
                self._perplexity(self.inputs.calibration)
            self._maxima[strategy] = record
        return {name: peak / qmax(scheme.act_bits) for name, peak in self._maxima[strategy].items()}

    def _options(self) -> dict:
        return {"alpha": self.config.alpha, "seed": self.config.seed, "blocks_path": self.config.blocks_path}

    def _perplexity(self, windows: torch.Tensor) -> PerplexityResult:
        return evaluate_perplexity(
            self.loaded.model,
            windows,
            batch_size=self.config.batch_size,
            progress=False,
            prefix_len=self.inputs.prefix_len,
        )

    def tasks(self, scheme: Scheme | None, strategy: str) -> dict:
        """Zero-shot task scores under (scheme, strategy); unquantized when `scheme` is None."""
        if scheme is None:
            return evaluate_tasks(self.loaded, self.config.tasks).to_json()
        scales = self.static_scales(scheme, strategy)

        def context():
            return quant_context(self.loaded, scheme, strategy, self.calib, **self._options(), static_scales=scales)

        return evaluate_tasks(self.loaded, self.config.tasks, context).to_json()

    def __call__(
        self, scheme: Scheme, strategy: str, windows: torch.Tensor, blocks: list[int] | None = None
    ) -> PerplexityResult:
        scales = self.static_scales(scheme, strategy)
        with quant_context(
            self.loaded, scheme, strategy, self.calib, **self._options(), blocks=blocks, static_scales=scales
        ):
            return self._perplexity(windows)


def _row(
    scheme: Scheme, strategy: str, result: PerplexityResult, baseline: float, kept: float, chosen: str | None = None
) -> dict:
    row = {
        "scheme": scheme.name,
        "strategy": strategy,
        "perplexity": result.perplexity,
        "ratio": result.perplexity / baseline,
        "tokens": result.tokens,
        "nonfinite_tokens": result.nonfinite_tokens,
        "kept_token_share": kept if "outlier-tokens" in parts(chosen or strategy) else 0.0,
    }
    if chosen is not None:
        row["chosen"] = chosen
    return row


def trace_super_weights(loaded: LoadedModel, window: torch.Tensor, config: QuantConfig) -> list[SuperWeight]:
    """The super weights `massact trace` finds on the text of one calibration window (top `config.super_weights`)."""
    from massact.trace import TraceConfig  # the trace builds on this package: imported when used
    from massact.trace import run as trace

    trace_config = TraceConfig(
        thresholds=config.thresholds,
        top=config.super_weights,
        verify=False,
        risk=False,
        blocks_path=config.blocks_path,
        progress=False,
    )
    traced = trace(loaded, calibration_text(loaded, window), trace_config)
    return super_weights_from_trace(traced.entries(), config.super_weights)


def run(loaded: LoadedModel, inputs: QuantInputs, config: QuantConfig | None = None) -> QuantResult:
    """Perplexity of `loaded` on `inputs.windows` unquantized and under every (scheme, strategy) of `config`.

    keep-super-weights (and `best`) keep `inputs.super_weights`; when None, they are traced on the
    text of the first calibration window.
    """
    config = config or QuantConfig()
    if config.tasks is not None and loaded.offload is not None:
        raise MassactError(
            "`tasks` is not available under block execution (`offload='blocks'`): the task harness runs the whole "
            "model for each request; load the model with `offload='none'`, or leave `tasks` out"
        )
    schemes = [parse_scheme(s) for s in config.schemes]
    structure = find_structure(loaded.model, config.blocks_path)
    rewrites = _rewrites(loaded, inputs, config) if _may_fold(config) else None
    explicit = next((s for s in config.strategies if "rotate" in parts(s)), None)
    if rewrites is not None and rewrites["rotate"] is None and (explicit or BEST in config.strategies):
        rewrites["rotate"] = inexact(loaded, inputs.calibration, config.seed, config.blocks_path)
    no_rotate = (rewrites or {}).get("rotate")
    if no_rotate and explicit:
        raise rotate_refused(explicit, no_rotate)
    if config.needs_super_weights and inputs.super_weights is None:
        inputs.super_weights = trace_super_weights(loaded, inputs.calibration[0], config)
    tell = say if config.progress else _quiet
    peaks = BlockPeaks(loaded.model, structure)  # watches the unquantized pass of the first draw
    calib, evaluate, baseline, rows, choices = _measure(loaded, inputs, config, schemes, tell, peaks, no_rotate)
    spread = None
    if inputs.draws:
        baselines, all_rows = [baseline.perplexity], [rows]
        for number, extra in enumerate(inputs.draws, 2):
            tell(f"seed {extra.seed} ({number}/{len(inputs.draws) + 1}): the same measurement on windows it draws")
            extra.super_weights = inputs.super_weights
            _, _, other, other_rows, _ = _measure(
                loaded, extra, replace(config, tasks=None), schemes, tell, no_rotate=no_rotate
            )
            baselines.append(other.perplexity)
            all_rows.append(other_rows)
        spread = summarize([inputs.seed, *(d.seed for d in inputs.draws)], baselines, all_rows)
    sensitivity = None
    if config.sensitivity is not None:
        tell(
            f"sensitivity: {config.sensitivity} in one block at a time, {len(structure)} blocks x "
            f"{min(config.sensitivity_samples, inputs.windows.shape[0])} windows"
        )
        sensitivity = _sensitivity(evaluate, parse_scheme(config.sensitivity), inputs, len(structure), config)
    measured = {p for r in rows for p in parts(r.get("chosen") or r["strategy"])}
    return QuantResult(
        rewrites=rewrites if measured & {"rotate", "smooth"} else None,
        model=loaded.name,
        **inputs.describe(),
        config=config,
        schemes=[s.to_json() for s in schemes],
        baseline=baseline.to_json() | ({"tasks": evaluate.tasks(None, "none")} if config.tasks else {}),
        rows=rows,
        best=choices,
        sensitivity=sensitivity,
        calibration=calib,
        precision=Precision.from_peaks(peaks),
        weights=loaded.quantization,
        spread=spread,
        kept_token_share=calib.kept_share(inputs.windows),
        unquantized=unquantized_weights(loaded.model, [structure.block_path(i) for i in range(len(structure))]),
        execution=loaded.execution(),
    )


def _may_fold(config: QuantConfig) -> bool:
    """Whether a strategy run may rotate or smooth (`best` may)."""
    return any(s == BEST or parts(s) & {"rotate", "smooth"} for s in config.strategies)


def _rewrites(loaded: LoadedModel, inputs: QuantInputs, config: QuantConfig) -> dict:
    """Which rewrites `massact rewrite` accepts for this model (`residual.support.refusals`): quant's `rotate` is the
    rewrite's, so it runs only where the rewrite rotates; the report suggests only a rewrite the rewrite takes."""
    try:
        return refusals(loaded, inputs.calibration[:1], config.blocks_path)
    except Exception as exc:  # a model the rewrite cannot map: no rewrite is suggested, with the reason
        text = str(exc).strip().splitlines()
        why = f"the rewrite cannot map this model ({text[0] if text else type(exc).__name__})"
        return dict.fromkeys((*REWRITES, "check_quant"), why)


def _measure(
    loaded: LoadedModel,
    inputs: QuantInputs,
    config: QuantConfig,
    schemes: list[Scheme],
    tell: Callable,
    peaks: BlockPeaks | None = None,
    no_rotate: str | None = None,
) -> tuple[Calibration, _Evaluator, PerplexityResult, list[dict], dict[str, dict]]:
    """Calibrate on one draw, then its baseline (watched by `peaks`) and every (scheme, strategy) row; `best` leaves
    out rotations where `no_rotate` says why the rewrite refuses them."""
    tell(
        f"calibrating: one pass over {inputs.calibration.shape[0]} held-out windows (activation maxima, outlier tokens)"
    )
    calib = calibrate(
        loaded,
        inputs.calibration,
        thresholds=config.thresholds,
        super_weights=inputs.super_weights,
        blocks_path=config.blocks_path,
        batch_size=config.batch_size,
        progress=config.progress,
    )
    evaluate = _Evaluator(loaded, inputs, config, calib)
    tell(f"unquantized perplexity on {inputs.windows.shape[0]} x {inputs.windows.shape[1]} windows")
    with peaks if peaks is not None else nullcontext():
        baseline = evaluate._perplexity(inputs.windows)
    kept = calib.kept_share(inputs.windows)
    jobs = [(scheme, strategy) for scheme in schemes for strategy in config.strategies]
    done: dict[tuple[str, str], PerplexityResult] = {}
    scored: dict[tuple[str, str], dict] = {}  # zero-shot task scores, with --tasks
    rows: list[dict] = []
    choices: dict[str, dict] = {}
    for number, (scheme, strategy) in enumerate(jobs, 1):
        chosen = None
        if strategy == BEST:
            best_windows = inputs.calibration[: config.best_samples]
            chosen, tried, skipped = _choose(evaluate, scheme, best_windows, calib, tell, no_rotate)
            choices[scheme.name] = {"chosen": chosen, "calibration_perplexity": tried, "not_tried": skipped}
        name = chosen or strategy
        if (scheme.name, name) not in done:
            tell(f"[{number}/{len(jobs)}] {scheme.name} {name}: perplexity on {inputs.windows.shape[0]} windows")
            done[(scheme.name, name)] = evaluate(scheme, name, inputs.windows)
        rows.append(_row(scheme, strategy, done[(scheme.name, name)], baseline.perplexity, kept, chosen))
        if config.tasks is not None:
            if (scheme.name, name) not in scored:
                say(f"zero-shot tasks: {scheme.name} {name}")
                scored[(scheme.name, name)] = evaluate.tasks(scheme, name)
            rows[-1]["tasks"] = scored[(scheme.name, name)]
    return calib, evaluate, baseline, rows, choices


def _quiet(message: str) -> None:
    """No progress message (--json, or progress turned off)."""


def _choose(
    evaluate: _Evaluator,
    scheme: Scheme,
    windows: torch.Tensor,
    calib: Calibration,
    tell: Callable = _quiet,
    no_rotate: str | None = None,
) -> tuple[str, dict, dict]:
    """The candidate strategy with the lowest perplexity on the calibration windows, their perplexities, and the
    candidates not tried with why (rotations the rewrite refuses: `no_rotate`)."""
    tried = {}
    usable = [s for s in candidates(scheme) if "keep-super-weights" not in parts(s) or calib.super_weights]
    skipped = {s: no_rotate for s in usable if no_rotate and "rotate" in parts(s)}
    usable = [s for s in usable if s not in skipped]
    for number, strategy in enumerate(usable, 1):
        tell(
            f"  best for {scheme.name}: trying {strategy} ({number}/{len(usable)}) "
            f"on {windows.shape[0]} calibration windows"
        )
        tried[strategy] = evaluate(scheme, strategy, windows).perplexity
    chosen = min(tried, key=lambda s: (tried[s] != tried[s], tried[s]))  # NaN last
    return chosen, tried, skipped


def _sensitivity(evaluate: _Evaluator, scheme: Scheme, inputs: QuantInputs, blocks: int, config: QuantConfig) -> dict:
    """Perplexity with one block's Linears quantized at a time (strategy none), on the first windows."""
    windows = inputs.windows[: config.sensitivity_samples]
    reference = evaluate._perplexity(windows).perplexity
    rows = []
    with steps(blocks, f"sensitivity {scheme.name}", unit="blocks", enabled=config.progress) as shown:
        for block in range(blocks):
            result = evaluate(scheme, "none", windows, blocks=[block])
            ratio = result.perplexity / reference
            rows.append({"block": block, "perplexity": result.perplexity, "ratio": ratio})
            shown.advance(note=f"block {block}: {fmt_ppl(result.perplexity)}, {ratio - 1:+.1%}")
    return {
        "scheme": scheme.name,
        "strategy": "none",
        "windows": list(windows.shape),
        "baseline": reference,
        "massive_blocks": evaluate.calib.massive_blocks,
        "blocks": rows,
    }
