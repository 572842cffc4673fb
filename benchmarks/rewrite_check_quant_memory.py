"""Peak memory and time of `massact rewrite --check-quant w8a8` against the same rewrite without it.

Each run is its own process (a process's peak resident set only grows): the model is loaded in float32 on the
CPU, then `massact.rewrite.run` rewrites it exactly as the command does. Per run it prints the resident set
after loading, the peak (`ru_maxrss`), the wall time, and the peak above the loaded model in model copies
(float32 weights and buffers); then `peak_ratio` (with / without --check-quant) and `time_ratio`. Last line: JSON.

    python benchmarks/rewrite_check_quant_memory.py [--model default] [--rescale auto] [--samples 2] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> dict:
    """One rewrite in this process: its memory and time."""
    import psutil

    from massact.models.loading import load_model
    from massact.models.memory import peak_resident_memory, tensor_bytes
    from massact.quant import load_inputs
    from massact.rewrite import RewriteConfig, run

    loaded = load_model(args.model, dtype="float32", device="cpu")
    inputs = load_inputs(loaded, "shakespeare", args.samples, args.seq_len, args.calib_samples, seed=0)
    model_bytes = tensor_bytes([*loaded.model.parameters(), *loaded.model.buffers()])
    loaded_rss = psutil.Process().memory_info().rss
    check = "w8a8" if args.check_quant else None
    config = RewriteConfig(rescale=args.rescale, check_quant=check, progress=False)
    began = time.perf_counter()
    run(loaded, inputs, config)
    seconds = time.perf_counter() - began
    peak = peak_resident_memory()
    return {
        "check_quant": check,
        "model_bytes": model_bytes,
        "loaded_rss_bytes": loaded_rss,
        "peak_rss_bytes": peak,
        "extra_copies": (peak - loaded_rss) / model_bytes,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--rescale", default="auto")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calib-samples", type=int, default=2)
    parser.add_argument("--check-quant", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    runs = {}
    for check in (False, True):
        argv = [sys.executable, __file__, "--child", "--model", args.model, "--rescale", args.rescale]
        argv += ["--samples", str(args.samples), "--seq-len", str(args.seq_len)]
        argv += ["--calib-samples", str(args.calib_samples)] + (["--check-quant"] if check else [])
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
        runs[check] = json.loads(done.stdout.strip().splitlines()[-1])
        r = runs[check]
        print(
            f"{'with' if check else 'without'} --check-quant: loaded {r['loaded_rss_bytes'] / 1e9:.2f} GB, "
            f"peak {r['peak_rss_bytes'] / 1e9:.2f} GB ({r['extra_copies']:.2f} model copies above the loaded model "
            f"of {r['model_bytes'] / 1e9:.2f} GB), {r['seconds']:.1f} s"
        )
    report = {
        "model": args.model,
        "windows": [args.samples, args.seq_len],
        "calibration_windows": [args.calib_samples, args.seq_len],
        "without": runs[False],
        "with": runs[True],
        "peak_ratio": runs[True]["peak_rss_bytes"] / runs[False]["peak_rss_bytes"],
        "time_ratio": runs[True]["seconds"] / runs[False]["seconds"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
