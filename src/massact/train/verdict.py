"""Did anything form? An experiment's final models against the paper's criterion and the preset's targets.

`judge` reads the rows of experiment.json (one per variant x seed, with the final model's blocks) and says,
per variant, in how many seeds a massive activation formed (the paper's criterion, `massact.detect`) and
whether the preset's targets (`presets.PRESET_TARGETS`) were reached; `next_step` says what to run next,
as a command that can be pasted.
"""

from __future__ import annotations

import shlex
import statistics
from pathlib import Path

from massact.defaults import ATTENTION_VARIANTS
from massact.detect import Thresholds
from massact.train.presets import PRESET_TARGETS, PRESETS, Targets

BASELINE = "default"
TARGET_MEASURES = ("sink_rate", "residual_peak", "top1", "top1_median", "top1_on_bos", "dim_constancy")  # ">="
SEEDS_NEEDED = 2 / 3  # default meets the targets when this share of its seeds reaches every number
PAPER_VARIANTS = ("default", "sink-token", "attn-bias")  # `experiment attention-bias`
ENOUGH_SEEDS = 3
LONGER = 4  # "train longer": this many times the steps
BIGGER = {"backcopy-test": "backcopy-cpu"}  # a preset for tests -> the one for real runs
# presets whose search (their own blocks and optimizer) found that longer training does not reach the targets
SEARCHED = {"backcopy-llama": "docs/attention_variants.md, 'Finding the setting: the search'"}


def massive_in(row: dict) -> bool:
    """Whether any block of one run's final model has an entry that passes the paper's criterion."""
    return any(block.get("num_massive", 0) > 0 for block in row["blocks"])


def asked_measures(targets: Targets) -> list[str]:
    """The measures a preset's targets set a goal for."""
    return [m for m in TARGET_MEASURES if getattr(targets, m) is not None]


def meets_targets(row: dict, targets: Targets) -> bool:
    """Whether one run reaches every number its preset's targets ask for at once."""
    return all(row[m] >= getattr(targets, m) for m in asked_measures(targets))


def judge(rows: list[dict], preset: str, thresholds: Thresholds | None = None) -> dict:
    """Per variant: seeds with a massive activation, the largest |x| and its ratio, each target's mean and seeds
    reaching it; `formed`: what default grew (None when default was not run)."""
    thresholds = thresholds or Thresholds()
    targets = PRESET_TARGETS.get(preset, Targets())
    variants: dict[str, dict] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == variant]
        top = max((b for r in runs for b in r["blocks"]), key=lambda b: b["top1"])
        entry: dict = {
            "seeds": len(runs),
            "massive_seeds": sum(massive_in(r) for r in runs),
            "largest_top1": top["top1"],
            "ratio_there": top["ratio"],
        }
        asked = asked_measures(targets)
        for measure in asked:
            goal = getattr(targets, measure)
            mean = statistics.fmean(r[measure] for r in runs)
            reached = sum(r[measure] >= goal for r in runs)
            entry[measure] = {"target": goal, "mean": mean, "seeds_reached": reached, "reached": mean >= goal}
        if asked:  # seeds that reach every number at once
            entry["all_targets_seeds"] = sum(meets_targets(r, targets) for r in runs)
        variants[variant] = entry
    base = variants.get(BASELINE)
    formed = None
    if base is not None:
        formed = {"massive": base["massive_seeds"] > 0}
        formed.update({m: base[m]["reached"] for m in TARGET_MEASURES if m in base})
        if "all_targets_seeds" in base:
            formed["all_targets"] = base["all_targets_seeds"] >= SEEDS_NEEDED * base["seeds"]
    return {
        "criterion": {"abs": thresholds.abs, "ratio": thresholds.ratio},
        "targets": targets.to_json(),
        "variants": variants,
        "formed": formed,
    }


def targets_met(verdict: dict) -> bool:
    """Whether default reached every target of the preset (False when default was not run)."""
    formed = verdict["formed"]
    if formed is None:
        return False
    if "all_targets" in formed:  # enough seeds reach every number at once (a mean can hide one seed's miss)
        numeric = formed["all_targets"]
    else:
        numeric = all(formed[m] for m in TARGET_MEASURES if m in formed)
    return numeric and (formed["massive"] or not verdict["targets"]["massive"])


def anything_formed(verdict: dict) -> bool:
    """Whether default grew a massive activation or reached any numeric target."""
    formed = verdict["formed"] or {}
    return any(formed.values())


def experiment_command(
    task: str,
    preset: str,
    variants: list[str],
    seeds: list[int],
    max_steps: int,
    optimizer: str,
    out: Path,
    arch: str | None = None,
) -> str:
    """The `massact experiment` line that trains `variants` x `seeds` at this budget into `out`."""
    base = PRESETS[preset]
    budget = ["--max-steps", str(max_steps)] if max_steps != base.max_steps else []
    if seeds[0] != 0 and len(seeds) == 1 and tuple(variants) == PAPER_VARIANTS and optimizer == base.optimizer:
        args = ["attention-bias", "--corpus", task, "--preset", preset, "--seed", str(seeds[0]), *budget]
    else:
        args = ["attention-variants", "--task", task, "--preset", preset, "--variants", ",".join(variants)]
        args += ["--seeds", str(len(seeds)), *budget]
        if optimizer != base.optimizer:
            args += ["--optimizer", optimizer]
        if arch is not None and arch != base.model.arch:
            args += ["--arch", arch]
    return shlex.join(["massact", "experiment", *args, "--out", str(out)])


def _beside(out: Path, suffix: str) -> Path:
    """A new folder next to `out`, named after it: exp -> exp-6000-steps."""
    out = out if out.name else out.absolute()
    return out.with_name(f"{out.name}-{suffix}")


def next_step(data: dict, verdict: dict, out: Path) -> dict:
    """What to run next: {"why": a sentence, "command": a line to paste, or None}."""
    rows = data["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    task, preset, config = data["task"], data["preset"], data["config"]
    steps, optimizer = config["max_steps"], config["optimizer"]

    def command(**change) -> str:
        settings = {"preset": preset, "variants": variants, "seeds": seeds, "max_steps": steps, "out": out}
        settings.update(change)
        if settings["preset"] != preset and "max_steps" not in change:
            settings["max_steps"] = PRESETS[settings["preset"]].max_steps
        return experiment_command(task, optimizer=optimizer, arch=config["model"].get("arch"), **settings)

    if BASELINE not in variants:
        why = (
            "default was not run, so there is nothing to compare the designs with; add it (finished runs are read back)"
        )
        return {"why": why, "command": command(variants=[BASELINE, *variants])}
    if not targets_met(verdict):
        if preset in BIGGER:
            bigger = BIGGER[preset]
            why = f"default did not reach {preset}'s targets; {preset} is sized for tests: train at {bigger}"
            return {"why": why, "command": command(preset=bigger, out=_beside(out, bigger))}
        base = PRESETS[preset]  # the search ran on the preset's own blocks and optimizer
        if preset in SEARCHED and (config["model"].get("arch"), optimizer) == (base.model.arch, base.optimizer):
            why = (
                f"default did not reach {preset}'s targets; its search found that longer runs do not (the ratio "
                f"to the median moves with the seed, not the steps), nor wider models or larger batches: see "
                f"{SEARCHED[preset]}"
            )
            return {"why": why, "command": None}
        longer = steps * LONGER
        why = f"default did not reach {preset}'s targets in {steps:,} steps; train {LONGER}x longer"
        if preset == "cpu-small":
            why += " (the paper's size is --preset gpt2-124m, on GPUs)"
        return {"why": why, "command": command(max_steps=longer, out=_beside(out, f"{longer}-steps"))}
    if len(seeds) < ENOUGH_SEEDS and seeds[0] == 0:
        why = f"default reached {preset}'s targets; check that it holds over {ENOUGH_SEEDS} seeds"
        why += " (finished runs are read back)"
        return {"why": why, "command": command(seeds=list(range(ENOUGH_SEEDS)))}
    if set(variants) != set(ATTENTION_VARIANTS):
        why = f"default reached {preset}'s targets; compare every attention design (finished runs are read back)"
        return {"why": why, "command": command(variants=list(ATTENTION_VARIANTS))}
    why = (
        f"default reached {preset}'s targets in every variant and seed asked; each run folder "
        f"({out}/runs/<variant>/seed<k>) loads as a model for `massact scan` and `massact attention`"
    )
    return {"why": why, "command": None}
