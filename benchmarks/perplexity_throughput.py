"""Tokens/s of massact's perplexity evaluator against a plain transformers loss loop, and the cost of the
mean intervention (hooked at the first massive block) against none.

Each batch is timed under every variant back to back (in rotating order), `--repeats` times; a variant's
time is the sum over batches of its best time per batch, the one least disturbed by other load.
Last stdout line: JSON with `throughput_ratio` (massact tokens/s / plain tokens/s, target >= 0.97) and
`intervention_overhead` (time with the mean intervention / without, target <= 1.02).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from massact.data.corpus import load_windows
from massact.interventions.hooks import intervene
from massact.interventions.sites import SiteSpec
from massact.interventions.survey import survey
from massact.models.loading import load_model
from massact.models.structure import find_structure
from massact.perplexity import evaluate_perplexity
from massact.tokens import TokenKinds


def plain_loop(model, windows: torch.Tensor, batch_size: int) -> float:
    """The textbook loop: the model's own loss per batch, weighted by the batch's predicted tokens."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size]
            loss = model(input_ids=batch, labels=batch).loss
            tokens = batch.shape[0] * (batch.shape[1] - 1)
            total += float(loss) * tokens
            count += tokens
    return total / count


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    loaded = load_model(args.model)
    model, device = loaded.model, loaded.device
    structure = find_structure(model)
    data = load_windows(loaded.tokenizer, args.corpus, samples=args.samples * 2, seq_len=args.seq_len)
    windows, held = data[: args.samples].to(device), data[args.samples :]
    kinds = TokenKinds.from_tokenizer(loaded.tokenizer)
    found = survey(model, structure, held, SiteSpec(), kinds, batch_size=args.batch_size, progress=False)
    block = found.first_block if found.first_block is not None else 0

    def ours(batch: torch.Tensor) -> float:
        return evaluate_perplexity(model, batch, args.batch_size, progress=False).nll

    def with_mean(batch: torch.Tensor) -> float:
        with intervene(model, structure, SiteSpec(), "mean", [block], means=found.means, kinds=kinds):
            return ours(batch)

    variants = {"plain": lambda batch: plain_loop(model, batch, args.batch_size), "massact": ours, "mean": with_mean}
    batches = list(windows.split(args.batch_size))
    ours(batches[0])  # warm-up
    best = {name: [float("inf")] * len(batches) for name in variants}
    values: dict[str, list[float]] = {name: [0.0] * len(batches) for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        for index, batch in enumerate(batches):
            shift = (repeat + index) % len(names)
            for name in names[shift:] + names[:shift]:
                seconds, values[name][index] = timed(lambda fn=variants[name], b=batch: fn(b))
                best[name][index] = min(best[name][index], seconds)
    total = {name: sum(times) for name, times in best.items()}
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    result = {
        "model": loaded.name,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "windows": args.samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "intervention_block": block,
        "tokens_per_s": {name: tokens / seconds for name, seconds in total.items()},
        "nll": {name: sum(v) / len(v) for name, v in values.items()},
        "throughput_ratio": total["plain"] / total["massact"],
        "intervention_overhead": total["mean"] / total["massact"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
