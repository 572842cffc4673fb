"""Peak memory of attention capture on SmolLM2 for a long sequence, against baselines in the same process.

Three runs on the same 2048-token Shakespeare window:
  eager:    a plain forward pass with the model's eager attention (each block's map exists briefly);
  massact:  `analyze` with default options (measures every block, keeps only the heatmap corner);
  all maps: transformers' `output_attentions=True` (returns every block's map).
Peak memory above the level before each run: CUDA allocator peak on GPU, sampled process RSS on CPU.
Reported in MiB and in units of one block's attention map (heads x tokens^2 x 4 bytes). Last line: JSON.

    python benchmarks/attention_memory.py [--tokens 2048] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable

import psutil
import torch

from massact.attention import AttentionConfig
from massact.data.corpus import load_windows
from massact.models.loading import LoadedModel, load_model
from massact.models.structure import find_structure

MIB = 2**20


def peak_above_start(run: Callable[[], object], device: torch.device) -> tuple[int, float]:
    """(peak bytes above the level at start, seconds) while `run` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start, time.perf_counter() - began
    process = psutil.Process()
    start = process.memory_info().rss
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return max(0, peak - start), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    loaded = load_model("default", device=args.device, dtype="float32")
    model = loaded.model
    structure = find_structure(model)
    ids = load_windows(loaded.tokenizer, corpus="shakespeare", samples=1, seq_len=args.tokens, seed=0).to(device)
    heads = model.config.num_attention_heads
    one_map = heads * args.tokens**2 * 4
    original = model.config._attn_implementation

    def eager() -> None:
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)
        finally:
            model.set_attn_implementation(original)

    kept: list = []

    def capture() -> None:
        kept.append(run(LoadedModel(model), ids, AttentionConfig()))

    def all_maps() -> None:
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                out = model(input_ids=ids, use_cache=False, output_attentions=True)
            assert len(out.attentions) == len(structure)
        finally:
            model.set_attn_implementation(original)

    results = {}
    for name, run in (("eager", eager), ("massact", capture), ("all_maps", all_maps)):
        peak, seconds = peak_above_start(run, device)
        results[name] = (peak, seconds)
        print(f"{name:9s} peak +{peak / MIB:8.1f} MiB = {peak / one_map:5.2f} maps   {seconds:6.1f} s")
    sequence = kept[0].sequences[0]
    retained = sum(t.numel() * t.element_size() for t in [*sequence.maps.values(), sequence.heatmap])
    summary = {
        "benchmark": "attention_memory",
        "device": str(device),
        "tokens": args.tokens,
        "blocks": len(structure),
        "heads": heads,
        "one_map_mib": one_map / MIB,
        "eager_peak_mib": results["eager"][0] / MIB,
        "massact_peak_mib": results["massact"][0] / MIB,
        "all_maps_peak_mib": results["all_maps"][0] / MIB,
        "massact_peak_maps": results["massact"][0] / one_map,
        "all_maps_peak_maps": results["all_maps"][0] / one_map,
        "massact_over_eager": results["massact"][0] / max(results["eager"][0], 1),
        "all_maps_over_massact": results["all_maps"][0] / max(results["massact"][0], 1),
        "massact_retained_mib": retained / MIB,
        "massact_seconds_over_eager": results["massact"][1] / results["eager"][1],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
