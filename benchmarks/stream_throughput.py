"""Tokens/s of token-by-token decoding with eviction against the same loop with a full cache of the same size.

Both loops start from a cache of W entries (one forward over W tokens) and feed one token per step.
`full` keeps the cache at W entries with transformers' own `DynamicCache.crop(-1)` (dropping the entry just
added: no data moves, the cost of a cache that does not evict); `evict` drops the oldest non-sink entry
the way `massact stream` does (sinks:4); `evict+rerotate` also moves the keys behind it one position
down (`--positions cache`), reported for information. Each variant runs `--repeats` times in rotating
order and keeps its best time. Last stdout line: JSON with `throughput_ratio` (evict tokens/s / full
tokens/s, target >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from massact.capture.forward import input_device, run_forward
from massact.models.loading import load_model
from massact.stream.kvcache import Rotary, cache_keyword, drop_entry, new_cache

SINKS = 4


def decode(model, ids: torch.Tensor, cache_size: int, variant: str, rotary: Rotary | None) -> float:
    """Seconds for feeding ids[cache_size:] one at a time after a forward over ids[:cache_size]."""
    device = input_device(model)
    keyword = cache_keyword(model)
    cache = new_cache()
    run_forward(model, ids[:, :cache_size], use_cache=True, **{keyword: cache})
    start = time.perf_counter()
    for step in range(cache_size, ids.shape[1]):
        run_forward(
            model,
            ids[:, step : step + 1],
            attention_mask=torch.ones(1, cache_size + 1, dtype=torch.long, device=device),
            position_ids=torch.tensor([[step]], device=device),
            use_cache=True,
            **{keyword: cache},
        )
        if variant == "full":
            cache.crop(-1)
        else:
            drop_entry(cache, SINKS, rotary)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model, device=args.device)
    model = loaded.model
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, args.cache + args.steps), device=input_device(model))
    rotary = Rotary.of(model) if any(n.endswith("inv_freq") for n, _ in model.named_buffers()) else None
    variants = ["full", "evict"] + (["evict+rerotate"] if rotary is not None else [])
    best = {name: float("inf") for name in variants}
    decode(model, ids, args.cache, "full", None)  # warm-up
    for repeat in range(args.repeats):
        for name in variants[repeat % len(variants) :] + variants[: repeat % len(variants)]:
            seconds = decode(model, ids, args.cache, name, rotary if name == "evict+rerotate" else None)
            best[name] = min(best[name], seconds)
    speed = {name: args.steps / seconds for name, seconds in best.items()}
    result = {
        "model": loaded.name,
        "device": args.device,
        "cache": args.cache,
        "steps": args.steps,
        "repeats": args.repeats,
        "tokens_per_s": speed,
        "throughput_ratio": speed["evict"] / speed["full"],
    }
    if "evict+rerotate" in speed:
        result["rerotate_ratio"] = speed["evict+rerotate"] / speed["full"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
