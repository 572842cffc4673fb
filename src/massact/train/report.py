"""The attention-variants experiment's result and its views: experiment.json, report.md and figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from massact.format import fmt_number
from massact.html.registry import result_kind
from massact.outputs import write_json
from massact.report.figures import plot_curves
from massact.report.spread import moments
from massact.report.tables import numeric_column, print_table
from massact.train.config import TrainConfig
from massact.train.measures import summarize_blocks
from massact.train.trainer import TrainResult
from massact.train.verdict import SEEDS_NEEDED, TARGET_MEASURES, anything_formed, judge, next_step

KIND = "experiment"  # the `kind` field of the JSON: which result this is

MEASURES = (
    "final_loss",
    "sink_rate",
    "residual_peak",
    "value_drain",
    "kurtosis",
    "top1",
    "top1_median",
    "top1_on_bos",
    "dim_constancy",
)
CURVES = ("sink_rate", "residual_peak", "value_drain", "kurtosis", "top1", "top1_median")
FACTOR_MEASURES = ("top1", "top1_median", "residual_peak", "sink_rate")  # default / variant: what a design lowers
HEADERS = {
    "final_loss": "final loss",
    "sink_rate": "sink rate",
    "residual_peak": "residual peak",
    "value_drain": "value drain",
    "kurtosis": "kurtosis",
    "top1": "top-1 \\|x\\|",
    "top1_median": "top-1 / median",
    "top1_on_bos": "top entry on BOS",
    "dim_constancy": "same dim",
}
BASELINE = "default"


def run_row(variant: str, seed: int, run: TrainResult) -> dict:
    """One variant x seed: the final model's measures (`summarize_blocks`), its blocks and its curves."""
    blocks = run.final_blocks
    curves = {"step": [e["step"] for e in run.emergence]}
    curves.update({name: [e[name] for e in run.emergence] for name in CURVES})
    curves["loss_step"] = [e["step"] for e in run.val_log]
    curves["loss"] = [e["val_loss"] for e in run.val_log]
    return {
        "variant": variant,
        "seed": seed,
        "final_loss": run.final_val_loss,
        **summarize_blocks(blocks),
        "steps": run.step,
        "diverged_at": run.diverged_at,
        "train_seconds": run.train_seconds,
        "blocks": blocks,
        "curves": curves,
    }


def summarize_variants(rows: list[dict]) -> dict[str, dict]:
    """Per variant: every measure's spread over seeds, and default's mean / this variant's mean."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    summary = {}
    for variant, runs in by_variant.items():
        summary[variant] = {"seeds": len(runs), **{m: moments([r[m] for r in runs]) for m in MEASURES}}
    if BASELINE in summary:
        base = summary[BASELINE]
        for entry in summary.values():
            entry["factor_vs_default"] = {
                m: base[m]["mean"] / entry[m]["mean"] if entry[m]["mean"] > 0 else None for m in FACTOR_MEASURES
            }
            entry["loss_vs_default"] = entry["final_loss"]["mean"] / base["final_loss"]["mean"] - 1.0
    return summary


@result_kind(KIND, "experiment.json")
@dataclass
class ExperimentResult:
    """Every variant x seed trained with the same task, preset and budget."""

    task: str
    preset: str
    config: TrainConfig  # the first run's (the others differ in attention and seed only)
    runs: dict[tuple[str, int], TrainResult]
    out: Path = Path("experiment")  # where the runs are: the next command in the report names it

    @property
    def rows(self) -> list[dict]:
        return [run_row(variant, seed, run) for (variant, seed), run in self.runs.items()]

    def to_json(self) -> dict:
        """What experiment.json holds: task, preset, config, one row per variant x seed, the per-variant summary."""
        rows = self.rows
        config = self.config.to_dict()
        config["model"] = {k: v for k, v in config["model"].items() if k != "attention"}
        data = {
            "kind": KIND,
            "task": self.task,
            "preset": self.preset,
            "config": {k: v for k, v in config.items() if k != "seed"},
            "rows": rows,
            "summary": summarize_variants(rows),
        }
        verdict = judge(rows, self.preset)
        data["verdict"] = verdict | {"next": next_step(data, verdict, self.out)}
        return data

    def table(self) -> Table:
        table = Table(title=f"attention variants on {self.task} ({self.preset}): mean over seeds")
        table.add_column("variant")
        for name in MEASURES:
            numeric_column(table, name)
        for variant, entry in summarize_variants(self.rows).items():
            table.add_row(variant, *(fmt_number(entry[m]["mean"], 3) for m in MEASURES))
        return table

    def show(self, console: Console) -> None:
        print_table(console, self.table())
        data = self.to_json()
        verdict = data["verdict"]
        massive = [v for v, e in verdict["variants"].items() if e["massive_seeds"]]
        said = "no massive activation (paper's criterion) in any run"
        if massive:
            said = f"massive activations (paper's criterion) in: {', '.join(massive)}"
        if not anything_formed(verdict):
            said += "; nothing formed in default, so no default / variant ratio is given"
        console.print(said, highlight=False, markup=False, soft_wrap=True)
        step = verdict["next"]
        console.print(
            f"next: {step['why']}" + (f": {step['command']}" if step["command"] else ""),
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip

    def write(self, out: Path) -> None:
        """experiment.json, report.md and figures/ into `out`."""
        data = self.to_json()
        figures = out / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        for name in ("loss", *CURVES):
            curves, spreads = _mean_curves(data["rows"], name)
            colors = {variant: f"C{i}" for i, variant in enumerate(curves)}  # each band in its line's colour
            path = figures / f"{name}.png"
            plot_curves(curves, path, _TITLES[name], "step", name, log=False, colors=colors, spread=spreads)
        write_json(out / "experiment.json", data)
        (out / "report.md").write_text(markdown(data), encoding="utf-8")


_TITLES = {
    "loss": "validation loss",
    "sink_rate": "sink rate (share of heads with mean attention to position 0 > 0.3)",
    "residual_peak": "residual peak (|h_0| / median |h_i|, largest over blocks)",
    "value_drain": "value drain (|v_0| / median |v_i|, smallest over blocks)",
    "kurtosis": "excess kurtosis of the residual (largest over blocks)",
    "top1_median": "top-1 / median |activation| (largest over blocks)",
    "top1": "top-1 |activation| (of the block with the largest top-1 / median)",
}


def _mean_curves(rows: list[dict], name: str) -> tuple[dict, dict]:
    """Per variant, the curve `name` averaged over seeds (where they share steps) and its standard deviation
    (NaN at a step where a seed's value is not finite: a diverged run)."""
    steps_key = "loss_step" if name == "loss" else "step"
    curves, spreads = {}, {}
    variants = dict.fromkeys(r["variant"] for r in rows)
    for variant in variants:
        runs = [r["curves"] for r in rows if r["variant"] == variant]
        length = min(len(c[name]) for c in runs)
        columns = [[c[name][i] for c in runs] for i in range(length)]
        stats = [moments(col) for col in columns]
        curves[variant] = (runs[0][steps_key][:length], [m["mean"] for m in stats])
        spreads[variant] = [m["std"] for m in stats]
    return curves, spreads


def _cell(entry: dict, digits: int = 2) -> str:
    return f"{fmt_number(entry['mean'], digits)} ± {fmt_number(entry['std'], digits)}"


def shown_factors(verdict: dict) -> list[str]:
    """The default / variant columns worth a number: only of what formed in default.

    Residual peak: when default reached its target or grew a massive activation; sink rate: when default
    reached its sink-rate target. Nothing formed: no ratio at all (there is nothing for a design to remove).
    """
    formed = verdict["formed"] or {}
    shown = []
    if formed.get("top1") or formed.get("top1_median") or formed.get("massive"):
        shown += ["top1", "top1_median"]
    if formed.get("residual_peak") or formed.get("massive"):
        shown.append("residual_peak")
    if formed.get("sink_rate"):
        shown.append("sink_rate")
    return shown


_TARGET_NAMES = {
    "sink_rate": "sink rate",
    "residual_peak": "residual peak",
    "top1": "top-1 |x|",
    "top1_median": "top-1 / median",
    "top1_on_bos": "top entry on BOS",
    "dim_constancy": "top entry in one dim",
}


def _seeds(count: int, of: int) -> str:
    return f"{count} of {of} seed{'s' if of != 1 else ''}"


def verdict_lines(data: dict) -> list[str]:
    """The report's "What formed" section: the paper's criterion, the preset's targets, what to run next."""
    verdict = data["verdict"]
    crit = verdict["criterion"]
    lines = [
        "## What formed",
        "",
        f"**Paper's criterion** (a massive activation: |x| > {crit['abs']:,g} and at least "
        f"{crit['ratio']:,g}x its block's median |x|), in the final models:",
        "",
    ]
    for variant, entry in verdict["variants"].items():
        where = f"largest |x| {fmt_number(entry['largest_top1'], 2)}, {fmt_number(entry['ratio_there'], 1)}x its median"
        formed = "formed" if entry["massive_seeds"] else "did not form"
        lines.append(f"- {variant}: {formed} ({_seeds(entry['massive_seeds'], entry['seeds'])}; {where})")
    targets = verdict["targets"]
    asked = [f"{_TARGET_NAMES[m]} >= {targets[m]:g}" for m in TARGET_MEASURES if targets.get(m) is not None]
    if targets["massive"]:
        asked.append("a massive activation")
    lines += ["", f"**Preset {data['preset']}'s targets for default** ({', '.join(asked)}): "]
    base = verdict["variants"].get("default")
    if base is None:
        lines[-1] += "default was not run, so the targets cannot be checked."
    else:
        said = []
        for measure in TARGET_MEASURES:
            if measure in base:
                t = base[measure]
                state = "reached" if t["reached"] else "**not reached**"
                said.append(
                    f"{_TARGET_NAMES[measure]} {state} (mean {fmt_number(t['mean'], 2)}; "
                    f"{_seeds(t['seeds_reached'], base['seeds'])})"
                )
        if targets["massive"]:
            state = "formed" if verdict["formed"]["massive"] else "**did not form**"
            said.append(f"a massive activation {state} ({_seeds(base['massive_seeds'], base['seeds'])})")
        if "all_targets_seeds" in base:
            state = "met" if verdict["formed"]["all_targets"] else "**not met**"
            said.append(
                f"every number at once in {_seeds(base['all_targets_seeds'], base['seeds'])} "
                f"(needed: {SEEDS_NEEDED:.0%} of the seeds): {state}"
            )
        lines[-1] += "; ".join(said) + "."
    if not anything_formed(verdict):
        lines += [
            "",
            "Nothing formed in default, so the table gives no default / variant ratio: there is nothing here "
            "for a design to remove, and the variants cannot be told apart by what they prevent.",
        ]
    step = verdict["next"]
    lines += ["", f"**Next**: {step['why']}" + (":" if step["command"] else ".")]
    if step["command"]:
        lines += ["", "```", step["command"], "```"]
    return [*lines, ""]


def markdown(data: dict) -> str:
    """report.md of an experiment.json."""
    config = data["config"]
    model = config["model"]
    summary = data["summary"]
    seeds = max(entry["seeds"] for entry in summary.values())
    factors_shown = shown_factors(data["verdict"])
    headers = {
        "top1": "top-1: default / variant",
        "top1_median": "top-1 / median: default / variant",
        "residual_peak": "peak: default / variant",
        "sink_rate": "sink rate: default / variant",
    }
    lines = [
        f"# Attention variants on {data['task']} (preset {data['preset']})",
        "",
        f"Model: {model.get('arch', 'gpt2')}-shaped, {model['n_layer']} blocks, hidden {model['n_embd']}, "
        f"{model['n_head']} heads, context "
        f"{model['block_size']}, vocabulary {model['vocab_size']}; {config['max_steps']} steps of batch "
        f"{config['batch_size']}, {config['optimizer']} at learning rate {config['learning_rate']:g} "
        f"(warm-up {config['warmup_steps']}, then {config.get('schedule', 'cosine')}, "
        f"weight decay {config['weight_decay']:g}); "
        f"{seeds} seed(s) per variant.",
        "Measures on the final model, over a fixed probe batch: sink rate over all heads of all blocks; residual "
        "peak, top-1 / median and kurtosis the largest over blocks; value drain the smallest over blocks; top-1 "
        "|x|, the share of probe sequences whose top entry is on BOS and the share in its most common dim, of the "
        "block with the largest top-1 / median. Mean ± standard deviation over seeds.",
        "",
        *verdict_lines(data),
        "## Variants",
        "",
        "| variant | "
        + " | ".join(HEADERS[m] for m in MEASURES)
        + " |"
        + "".join(f" {headers[m]} |" for m in factors_shown),
        "|---|" + "---|" * (len(MEASURES) + len(factors_shown)),
    ]
    for variant, entry in summary.items():
        factors = entry.get("factor_vs_default", {})
        cells = [_cell(entry["final_loss"], 3)] + [_cell(entry[m]) for m in MEASURES[1:]]
        cells += [fmt_number(factors.get(m), 1) if factors.get(m) is not None else "-" for m in factors_shown]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Every run",
        "",
        "| variant | seed | " + " | ".join(HEADERS[m] for m in MEASURES) + " | top dim | seconds |",
        "|---|---|" + "---|" * (len(MEASURES) + 2),
    ]
    for row in data["rows"]:
        cells = [fmt_number(row.get(m), 3) for m in MEASURES]
        cells += [str(row.get("top1_dim", "-")), f"{row['train_seconds']:.0f}"]
        lines.append(f"| {row['variant']} | {row['seed']} | " + " | ".join(cells) + " |")
    diverged = [
        f"{r['variant']} seed {r['seed']} at step {r['diverged_at']}" for r in data["rows"] if r.get("diverged_at")
    ]
    if diverged:
        lines += ["", f"Diverged (the training loss was not finite; training stopped there): {', '.join(diverged)}."]
    lines += [""] + [f"![{_TITLES[name]}](figures/{name}.png)" for name in ("loss", *CURVES)] + [""]
    return "\n".join(lines)
