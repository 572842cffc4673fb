"""Cost of massact's streaming capture on SmolLM2, against a plain forward and against keeping everything.

In one process: (1) time of a plain forward vs a forward under `capture_block_stats` at 1024 tokens;
(2) extra peak memory at 4096 tokens of the capture, and of keeping every block's output on the CPU in
float64 (what a keep-everything script does). Peak memory is the process RSS sampled every 0.2 ms by a
background thread, minus the RSS just before the forward. The script re-runs itself with glibc's
MALLOC_MMAP_THRESHOLD_ fixed at 64 KiB, so that every large tensor is its own mapping, returned to the
system when freed, and RSS follows live memory instead of the allocator's cached free lists.
The last line is JSON.

    python benchmarks/scan_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import psutil
import torch

from massact.capture.hooks import forward_hooks, output_tensor
from massact.capture.stats import capture_block_stats
from massact.models.loading import load_model
from massact.models.structure import find_structure


class PeakRSS:
    """Context manager: the largest RSS seen while it is open, minus the RSS at entry."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.extra = 0

    def __enter__(self) -> PeakRSS:
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.0002)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.extra = self.peak - self.start


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    loaded = load_model("default", device="cpu")
    model, structure = loaded.model, find_structure(loaded.model)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def ids(n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (1, n), generator=generator)

    def plain(x: torch.Tensor) -> None:
        model(input_ids=x)

    def captured(x: torch.Tensor) -> None:
        with capture_block_stats(model, structure) as collector:
            model(input_ids=x)
            collector.pop()

    def keep_everything(x: torch.Tensor) -> None:
        kept: list[torch.Tensor] = []
        hooks = [(b, lambda m, a, o: kept.append(output_tensor(o).detach().double().cpu())) for b in structure.blocks]
        with forward_hooks(hooks):
            model(input_ids=x)

    def timed(fn: Callable[[torch.Tensor], None], x: torch.Tensor) -> float:
        start = time.perf_counter()
        fn(x)
        return time.perf_counter() - start

    with torch.no_grad():
        short = ids(1024)
        plain(short), captured(short)  # warm-up
        times = {"plain": [], "capture": []}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            times["plain"].append(timed(plain, short))
            times["capture"].append(timed(captured, short))
        t_plain, t_capture = statistics.median(times["plain"]), statistics.median(times["capture"])

        long = ids(4096)
        plain(long)  # warm the allocator at this size
        extra = {"plain": [], "capture": [], "keep_everything": []}
        for _ in range(3):
            for name, fn in (("plain", plain), ("capture", captured)):
                with PeakRSS() as peak:
                    fn(long)
                extra[name].append(peak.extra)
        with PeakRSS() as peak:  # last: it leaves the allocator larger
            keep_everything(long)
        extra["keep_everything"].append(peak.extra)
    base = statistics.median(extra["plain"])
    massact_extra_raw = statistics.median(extra["capture"]) - base  # may be below zero: noise
    massact_extra = max(0.0, massact_extra_raw)
    keep_extra = max(1.0, statistics.median(extra["keep_everything"]) - base)
    mib = 1 << 20
    print(f"forward 1024 tokens: plain {t_plain * 1e3:.0f} ms, with capture {t_capture * 1e3:.0f} ms")
    print(
        f"extra peak RSS at 4096 tokens over a plain forward: capture {massact_extra / mib:.1f} MiB, "
        f"keep-everything (float64 on CPU) {keep_extra / mib:.1f} MiB"
    )
    print(
        json.dumps(
            {
                "time_ratio": round(t_capture / t_plain, 4),
                "memory_ratio": round(massact_extra / keep_extra, 5),
                "plain_ms_1024": round(t_plain * 1e3, 1),
                "capture_ms_1024": round(t_capture * 1e3, 1),
                "capture_extra_mib_4096": round(massact_extra / mib, 2),
                "capture_extra_raw_mib_4096": round(massact_extra_raw / mib, 2),
                "keep_everything_extra_mib_4096": round(keep_extra / mib, 2),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
