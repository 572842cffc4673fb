"""One point of the search for a Bigram-Backcopy setting whose default model grows a massive activation on BOS.

It trains with massact's own trainer (`massact.train.trainer.train`, the code `massact experiment` runs) into
a temporary folder, so a point found here is a preset as it is. Every `--every` steps it prints, for the
site (the block whose top entry is largest against its median), top-1 |x|, its ratio to the median, the
share of probe sequences whose top entry is on BOS, the dim most of them are in and its share, and the sink
rate over all heads. `--corpus` trains on text instead (BPE with `--vocab` tokens; "on BOS" is then the
window's first token). With `--log` it appends the point (settings, final measures, the top-1 curve,
seconds) to a JSON-lines file, the record docs/attention_variants.md quotes; `--table FILE` prints that
record as the page's markdown table.

    python benchmarks/backcopy_search.py --arch llama --layers 3 --width 64 --heads 1 --lr 3e-3 --steps 1000
    python benchmarks/backcopy_search.py --table docs/figures/attention_variants_llama/search.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from massact.train.config import ModelConfig, TrainConfig
from massact.train.experiment import task_data
from massact.train.measures import site, summarize_blocks
from massact.train.trainer import train

TASK_ROWS = TrainConfig.bigram_concentration  # the task's own bigram concentration (points before the flag had it)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="llama", choices=("gpt2", "llama"))
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--decay-gains", action="store_true")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"))
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--triggers", type=int, default=4)
    parser.add_argument("--concentration", type=float, default=TASK_ROWS, help="Dirichlet parameter of the bigram rows")
    parser.add_argument("--corpus", help="train on this text corpus (e.g. shakespeare, BPE of --vocab) instead")
    parser.add_argument("--attention", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log", type=Path, help="append the point to this JSON-lines file")
    parser.add_argument("--keep", type=Path, help="train into this run folder (kept, for massact scan) instead")
    parser.add_argument("--table", type=Path, help="print this JSON-lines record as a markdown table, train nothing")
    return parser.parse_args()


TABLE_HEADER = (
    "| blocks x width (heads) | context x batch | vocab | lr | schedule | weight decay | steps | seed | val loss "
    "| sink rate | block | top-1 \\|x\\| | / median | on BOS | dim (share) | residual peak | seconds |"
)


def vocab_cell(settings: dict) -> str:
    """The vocabulary, with the corpus or a bigram concentration other than the task's default beside it."""
    if settings.get("corpus"):
        return f"{settings['vocab']} ({settings['corpus']})"
    rows = settings.get("concentration", TASK_ROWS)
    return f"{settings['vocab']}" + ("" if rows == TASK_ROWS else f" (rows {rows:g})")


def table(record: Path) -> str:
    """The markdown table of a search record, one row per point, in the order they ran (final measures
    summarized again from the point's blocks, so every row follows today's `summarize_blocks`)."""
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for line in record.read_text(encoding="utf-8").splitlines():
        point = json.loads(line)
        s, f = point["settings"], {**point["final"], **summarize_blocks(point["blocks"])}
        cells = (
            f"{s['layers']} x {s['width']} ({s['heads']})",
            f"{s['context']} x {s['batch']}",
            vocab_cell(s),
            f"{s['lr']:g}",
            s["schedule"],
            f"{s['weight_decay']:g}" + (" (gains too)" if s.get("decay_gains") else ""),
            f"{s['steps']:,}",
            s["seed"],
            f"{f['val_loss']:.3f}",
            f"{f['sink_rate']:.2f}",
            f["top1_block"],
            f"{f['top1']:,.0f}",
            f"{f['top1_median']:.0f}",
            f"{f['top1_on_bos']:.2f}",
            f"{f['top1_dim']} ({f['dim_constancy']:.2f})",
            f"{f['residual_peak']:.1f}",
            f"{point['seconds']:.0f}",
        )
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def config_of(args: argparse.Namespace) -> TrainConfig:
    model = ModelConfig(
        vocab_size=args.vocab,
        block_size=args.context,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.width,
        attention=args.attention,
        arch=args.arch,
    )
    return TrainConfig(
        model=model,
        task="text" if args.corpus else "bigram-backcopy",
        triggers=args.triggers,
        bigram_concentration=args.concentration,
        optimizer=args.optimizer,
        batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=args.lr,
        min_lr=args.lr / 10,
        warmup_steps=args.warmup,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
        decay_norm_gains=args.decay_gains,
        eval_interval=args.every,
        eval_batches=4,
        monitor_interval=args.every,
        probe_sequences=16,
        checkpoint_interval=args.steps,
        seed=args.seed,
    )


def main() -> None:
    args = parse()
    if args.table:
        print(table(args.table))
        return
    torch.set_num_threads(args.threads)
    config = config_of(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = args.keep or Path(folder) / "run"
        data = task_data(config, args.corpus or "", run_dir)
        result = train(config, data, run_dir, progress=False)
    seconds = time.perf_counter() - started
    steps = sorted({r["step"] for r in result.monitor_rows})
    curve = []
    for step in steps:
        rows = sorted((r for r in result.monitor_rows if r["step"] == step), key=lambda r: r["block"])
        summary, top = summarize_blocks(rows), site(rows)
        curve.append({"step": step, **{k: top[k] for k in ("block", "top1", "ratio", "top1_on_bos", "top1_dim")}})
        print(
            f"step {step}: block {top['block']} top-1 {top['top1']:.1f} ({top['ratio']:.0f}x median), "
            f"on BOS {top['top1_on_bos']:.2f}, dim {top['top1_dim']} ({top['dim_constancy']:.2f}), "
            f"sink rate {summary['sink_rate']:.2f}, residual peak {summary['residual_peak']:.1f}",
            flush=True,
        )
    final = [r for r in result.monitor_rows if r["step"] == steps[-1]]
    point = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("log", "keep")
        },
        "final": {**summarize_blocks(final), "val_loss": result.final_val_loss},
        "blocks": final,
        "curve": curve,
        "seconds": round(seconds, 1),
    }
    print(f"{seconds:.0f} s, val loss {result.final_val_loss:.4f}", flush=True)
    if args.log:
        with args.log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(point) + "\n")


if __name__ == "__main__":
    main()
