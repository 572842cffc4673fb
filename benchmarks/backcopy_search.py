"""One point of the search for the smallest Bigram-Backcopy setting that grows sinks and residual peaks.

A plain training loop (no checkpoints, no files) over massact's GPT-2 (default attention), the
Bigram-Backcopy generator and the extreme-token measures, with the trainer's recipe: AdamW
(betas 0.9 / 0.95, decay on matrices only), linear warm-up then cosine decay to lr / 10,
gradient clipping at 1.0. Every `--every` steps it prints the validation loss (and the true
process's loss), the sink rate over all heads, and per block the residual peak, value drain,
each head's mean attention to BOS and the excess kurtosis. With `--no-bos` the sequences start
at the first token after BOS (BOS removed).

    python benchmarks/backcopy_search.py --layers 2 --width 64 --heads 2 --lr 1e-2 --steps 2000
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from massact.train.backcopy import BackcopyTask
from massact.train.gpt2 import GPT2, GPT2Config
from massact.train.measures import extreme_token_measures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--triggers", type=int, default=4)
    parser.add_argument("--concentration", type=float, default=0.5)
    parser.add_argument("--no-bos", action="store_true")
    parser.add_argument("--attention", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=300)
    args = parser.parse_args()

    task = BackcopyTask(vocab_size=args.vocab, triggers=args.triggers, concentration=args.concentration)
    drop = int(args.no_bos)

    def sample(count: int, seed: int) -> torch.Tensor:
        return task.sample(count, args.context + drop, seed)[:, drop:]

    torch.manual_seed(args.seed)
    config = GPT2Config(args.vocab, args.context, args.layers, args.heads, args.width, attention=args.attention)
    model = GPT2(config)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": args.weight_decay}, {"params": others, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps))
        return min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * cosine)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    probe, val = sample(16, 999), sample(128, 998)
    best = task.optimal_loss(val)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = sample(args.batch, args.seed * 10**6 + step - 1)
        model(batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % args.every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                loss = float(model(val, labels=val).loss)
            rows = extreme_token_measures(model, probe)
            model.train()
            heads = [share for row in rows for share in row["head_first_attention"]]
            print(
                f"step {step} ({time.perf_counter() - started:.0f} s): val loss {loss:.3f} (true process {best:.3f}), "
                f"sink rate {sum(h > 0.3 for h in heads) / len(heads):.2f}, "
                f"residual peak {[round(r['residual_peak'], 1) for r in rows]}, "
                f"value drain {[round(r['value_drain'], 2) for r in rows]}, "
                f"BOS attention {[[round(h, 2) for h in r['head_first_attention']] for r in rows]}, "
                f"kurtosis {[round(r['kurtosis'], 1) for r in rows]}",
                flush=True,
            )


if __name__ == "__main__":
    main()
