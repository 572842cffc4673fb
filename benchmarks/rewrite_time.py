"""Time of `massact rewrite` on SmolLM2, against a plain float32 perplexity pass over the same windows.

The rewrite runs exactly as the command does (`massact.rewrite.run`: copy, rewrite, save, reload with
`from_pretrained`, float32 and float16 checks of both models), from a loaded model; the baseline is
`evaluate_perplexity` of the original model on the held-out windows. Prints the wall time of both, the
process CPU time of the rewrite (on a shared machine wall time also counts other jobs), the time to
load the model, and `time_ratio` (rewrite / plain perplexity pass). Last line: JSON.

    python benchmarks/rewrite_time.py [--rescale auto] [--rotate] [--samples 2] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from massact.models.loading import load_model
from massact.perplexity import evaluate_perplexity
from massact.quant import load_inputs
from massact.rewrite import RewriteConfig, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rescale", default="auto")
    parser.add_argument("--rotate", action="store_true")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calib-samples", type=int, default=2)
    args = parser.parse_args()
    began = time.perf_counter()
    loaded = load_model("default", dtype="float32", device="cpu")
    load_s = time.perf_counter() - began
    inputs = load_inputs(loaded, "shakespeare", args.samples, args.seq_len, args.calib_samples, seed=0)
    began = time.perf_counter()
    plain = evaluate_perplexity(loaded.model, inputs.windows, batch_size=4, progress=False)
    plain_s = time.perf_counter() - began
    config = RewriteConfig(rescale=None if args.rotate else args.rescale, rotate=args.rotate, progress=False)
    began, cpu = time.perf_counter(), time.process_time()
    result = run(loaded, inputs, config)
    rewrite_s, rewrite_cpu = time.perf_counter() - began, time.process_time() - cpu
    data = result.to_json()
    print(f"load: {load_s:.1f} s; plain perplexity pass: {plain_s:.1f} s (perplexity {plain.perplexity:.2f})")
    print(f"rewrite: {rewrite_s:.1f} s wall, {rewrite_cpu:.1f} s CPU; total with loading {load_s + rewrite_s:.1f} s")
    report = {
        "threads": torch.get_num_threads(),
        "windows": list(inputs.windows.shape),
        "rewrites": [s["kind"] for s in data["rewrites"]],
        "load_s": load_s,
        "plain_perplexity_s": plain_s,
        "rewrite_s": rewrite_s,
        "rewrite_cpu_s": rewrite_cpu,
        "total_s": load_s + rewrite_s,
        "time_ratio": rewrite_s / plain_s,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
