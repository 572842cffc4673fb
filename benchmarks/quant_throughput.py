"""Throughput of simulated W8A8 quantization against the plain perplexity evaluator, on SmolLM2.

Both runs evaluate the same Shakespeare windows with `evaluate_perplexity`; the quantized run does so
inside `quant_context(loaded, W8A8, "none")` (weights quantized once on entry, included in the time;
one quantize-dequantize per distinct Linear input per forward: q/k/v and gate/up share theirs).
Runs alternate, each measured `--repeats` times; the best time of each
counts. Last line: JSON with both throughputs (tokens/s) and `throughput_ratio` (quantized / plain).

    python benchmarks/quant_throughput.py [--samples 4] [--seq-len 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from massact.data.corpus import load_windows
from massact.models.loading import load_model
from massact.perplexity import evaluate_perplexity
from massact.quant import parse_scheme, quant_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scheme", default="W8A8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    loaded = load_model("default", device=args.device, dtype="float32")
    windows = load_windows(loaded.tokenizer, "shakespeare", args.samples, args.seq_len, seed=1)
    scheme = parse_scheme(args.scheme)

    def timed(quantized: bool) -> tuple[float, float]:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)
        began = time.perf_counter()
        if quantized:
            with quant_context(loaded, scheme, "none"):
                result = evaluate_perplexity(loaded.model, windows, batch_size=args.batch_size, progress=False)
        else:
            result = evaluate_perplexity(loaded.model, windows, batch_size=args.batch_size, progress=False)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)
        return time.perf_counter() - began, result.perplexity

    timed(False)  # warm-up
    plain, quant = [], []
    for _ in range(args.repeats):
        seconds, plain_ppl = timed(False)
        plain.append(seconds)
        seconds, quant_ppl = timed(True)
        quant.append(seconds)
    began = time.perf_counter()
    with quant_context(loaded, scheme, "none"):
        entry = time.perf_counter() - began  # the one-time weight quantization, included in every quantized run
    tokens = windows.numel()
    plain_rate, quant_rate = tokens / min(plain), tokens / min(quant)
    print(f"plain:  {plain_rate:,.0f} tokens/s (perplexity {plain_ppl:.2f})")
    print(f"{scheme.name}: {quant_rate:,.0f} tokens/s (perplexity {quant_ppl:.2f})")
    report = {
        "device": str(loaded.device),
        "threads": torch.get_num_threads(),
        "windows": list(windows.shape),
        "scheme": scheme.name,
        "plain_tokens_per_s": plain_rate,
        "quant_tokens_per_s": quant_rate,
        "plain_perplexity": plain_ppl,
        "quant_perplexity": quant_ppl,
        "entry_s": entry,
        "throughput_ratio": quant_rate / plain_rate,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
