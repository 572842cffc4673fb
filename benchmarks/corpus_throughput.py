"""Corpus scan throughput vs a plain forward loop over the same batches, in the same process.

    python benchmarks/corpus_throughput.py [--model default] [--samples 16] [--seq-len 256] [--batch-size 8]

Each variant runs `--repeats` times, alternating; the best time of each counts. Last stdout line is JSON
with `throughput_ratio` = scan tokens/s / plain tokens/s (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from massact.corpus.run import corpus_scan
from massact.data import corpus_windows, load_texts
from massact.models.loading import load_model


def plain_loop(loaded, windows: torch.Tensor, batch_size: int) -> None:
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start : start + batch_size].to(loaded.device)
            loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    loaded = load_model(args.model, device=args.device)
    windows, ids = corpus_windows(loaded.tokenizer, load_texts(args.corpus), args.samples, args.seq_len)
    plain_loop(loaded, windows[: args.batch_size], args.batch_size)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "scan": []}
    runs = {
        "plain": lambda: plain_loop(loaded, windows, args.batch_size),
        "scan": lambda: corpus_scan(loaded, windows, ids, batch_size=args.batch_size, progress=False),
    }
    for _ in range(args.repeats):
        for name, run in runs.items():
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    tokens = windows.numel()
    plain, scan = min(times["plain"]), min(times["scan"])
    print(f"plain forward: {tokens / plain:,.0f} tokens/s; corpus scan: {tokens / scan:,.0f} tokens/s")
    result = {
        "benchmark": "corpus_throughput",
        "model": loaded.name,
        "device": str(loaded.device),
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "samples": args.samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "plain_tokens_per_s": tokens / plain,
        "scan_tokens_per_s": tokens / scan,
        "throughput_ratio": plain / scan,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
