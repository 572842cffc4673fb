"""What block-by-block execution costs and saves: peak memory and wall time of a corpus scan, each run in its own
process.

`smollm2`: the bundled SmolLM2 (float32), N Shakespeare windows of 512 tokens, three ways:
  memory:     the whole model loaded (`offload="none"`);
  blocks:     read from its checkpoint one block at a time (`offload="blocks"`);
  accelerate: transformers + accelerate with every weight offloaded to disk (`device_map={"": "disk"}`): each
              forward pass reads each module's weights again.
Then how memory and blocks grow with 1, 4, 16, 64 windows. Peak memory is the process's peak resident set,
absolute and above a baseline (imports done, tokenizer loaded, corpus read and cut). Block execution's is compared
with its target: the largest block, the embedding, one batch's activations and all windows' block outputs, plus
300 MB.

`large`: a random LLaMA with 13B shapes (hidden 5,120, 40 blocks, intermediate 13,824, 40 heads; SmolLM2's
tokenizer, so a vocabulary of 49,152), written as bfloat16 safetensors one block per shard (never whole in
memory), scanned on 4 windows of 512 tokens block by block in float32; the folder is deleted after. Reports peak
memory, wall time and the rate the checkpoint was read from storage (/proc/self/io).

    python benchmarks/offload.py smollm2 [--samples 16] [--batch-size 1] [--scaling 1,4,16,64]
    python benchmarks/offload.py large [--folder /var/tmp/massact-13b] [--max-memory 3.5GB]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

GB = 2**30
MB = 2**20


# ---- one measured run, in a child process -------------------------------------------------------------------


def _storage_read_bytes() -> int:
    with open("/proc/self/io", encoding="ascii") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("read_bytes"))


def child(args: argparse.Namespace) -> None:
    """Load the model `args.mode`'s way, scan `args.samples` windows, print one JSON line of measurements."""
    import psutil
    import torch
    import transformers

    from massact.corpus import CorpusConfig
    from massact.corpus import run as corpus_run
    from massact.data.corpus import load_windows
    from massact.models.loaded import LoadedModel
    from massact.models.loading import load_model

    torch.set_num_threads(args.threads)
    # the baseline: imports done, the tokenizer loaded and the corpus read and cut (the same in every mode)
    load_windows(transformers.AutoTokenizer.from_pretrained(args.model), "shakespeare", args.samples, args.seq_len)
    baseline = psutil.Process().memory_info().rss
    read_before = _storage_read_bytes()
    began = time.perf_counter()
    if args.mode == "accelerate":
        folder = Path(args.model)
        with _temporary_folder() as offload_folder:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, device_map={"": "disk"}, offload_folder=offload_folder, dtype=torch.float32
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            loaded = LoadedModel(model=model.eval(), tokenizer=tokenizer, name=folder.name, source=str(folder))
            result = _scan(corpus_run, CorpusConfig, loaded, args)
    else:
        offload = {"memory": "none", "blocks": "blocks"}[args.mode]
        loaded = load_model(args.model, dtype="float32", device="cpu", offload=offload, max_memory=args.max_memory)
        result = _scan(corpus_run, CorpusConfig, loaded, args)
    seconds = time.perf_counter() - began
    data = result.to_json()
    data.pop("execution", None)
    data.pop("model", None)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "samples": args.samples,
                "seconds": round(seconds, 2),
                "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "baseline_bytes": baseline,
                "storage_read_bytes": _storage_read_bytes() - read_before,
                "digest": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16],
            }
        )
    )


def _scan(corpus_run, config_cls, loaded, args: argparse.Namespace):
    config = config_cls(samples=args.samples, seq_len=args.seq_len, batch_size=args.batch_size, progress=False)
    return corpus_run(loaded, "shakespeare", config)


class _temporary_folder:
    def __enter__(self) -> str:
        import tempfile

        self.path = tempfile.mkdtemp(prefix="accelerate-offload-")
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def measure(mode: str, model: str, samples: int, **options: object) -> dict:
    """Run `child` for `mode` in a fresh process and return its measurements."""
    argv = [sys.executable, __file__, "child", "--mode", mode, "--model", model, "--samples", str(samples)]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} x {samples} failed:\n{done.stderr[-4000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  {mode:10s} {samples:3d} windows: {row['seconds']:8.1f} s, peak {row['peak_bytes'] / GB:5.2f} GB "
        f"({(row['peak_bytes'] - row['baseline_bytes']) / GB:5.2f} GB above baseline), "
        f"read {row['storage_read_bytes'] / GB:6.2f} GB from storage",
        flush=True,
    )
    return row


# ---- SmolLM2 -----------------------------------------------------------------------------------------------------


def _smollm2_folder() -> str:
    """The bundled SmolLM2 as a transformers folder (massact's converted cache of the GGUF)."""
    from massact.models.gguf import default_gguf_path, gguf_cache_dir
    from massact.models.loading import load_model

    load_model("default", device="cpu", offload="none")  # converts the GGUF once, if not done yet
    return str(gguf_cache_dir(default_gguf_path()))


def _target_bytes(folder: str, samples: int, batch: int, seq_len: int) -> dict:
    """Block execution's memory target: largest block + embedding + activations + 300 MB (float32)."""
    import torch
    import transformers

    from massact.models.checkpoint import empty_model
    from massact.models.memory import Workload, module_bytes
    from massact.models.structure import find_structure

    config = transformers.AutoConfig.from_pretrained(folder)
    meta = empty_model(transformers.AutoModelForCausalLM, config, torch.float32)
    block = max(module_bytes(b) for b in find_structure(meta).blocks)
    embedding = module_bytes(meta.get_input_embeddings())
    outputs = samples * seq_len * config.hidden_size * 4  # every window's block output, held between blocks
    activations = Workload(batch=batch, tokens=seq_len).working_bytes(meta, torch.float32) + outputs
    return {
        "weights": module_bytes(meta),
        "block": block,
        "embedding": embedding,
        "activations": activations,
        "target": block + embedding + activations + 300 * MB,
    }


def smollm2(args: argparse.Namespace) -> dict:
    folder = _smollm2_folder()
    options = {"batch_size": args.batch_size, "threads": args.threads}
    print(f"SmolLM2-135M (float32), {args.samples} windows of 512 tokens, batch {args.batch_size}:", flush=True)
    rows = {mode: measure(mode, folder, args.samples, **options) for mode in ("memory", "blocks", "accelerate")}
    target = _target_bytes(folder, args.samples, args.batch_size, 512)
    blocks, memory, disk = rows["blocks"], rows["memory"], rows["accelerate"]
    above = blocks["peak_bytes"] - blocks["baseline_bytes"]
    summary = {
        "identical_results": blocks["digest"] == memory["digest"] == disk["digest"],
        "blocks_time_vs_memory": round(blocks["seconds"] / memory["seconds"], 3),
        "accelerate_time_vs_blocks": round(disk["seconds"] / blocks["seconds"], 3),
        "blocks_peak_above_baseline_bytes": above,
        "memory_peak_above_baseline_bytes": memory["peak_bytes"] - memory["baseline_bytes"],
        "target": target,
        "blocks_within_target": above <= target["target"],
    }
    print(
        f"  blocks: {summary['blocks_time_vs_memory']}x the in-memory time; accelerate's disk offload "
        f"{summary['accelerate_time_vs_blocks']}x the block time; blocks' peak above baseline "
        f"{above / GB:.2f} GB against a target of {target['target'] / GB:.2f} GB (block {target['block'] / MB:.0f} "
        f"MB + embedding {target['embedding'] / MB:.0f} MB + activations {target['activations'] / MB:.0f} MB + "
        f"300 MB); results identical: {summary['identical_results']}",
        flush=True,
    )
    scaling = []
    if args.scaling:
        print("How it grows:", flush=True)
        for samples in [int(n) for n in args.scaling.split(",")]:
            for mode in ("memory", "blocks"):
                scaling.append(measure(mode, folder, samples, **options))
    return {"model": "SmolLM2-135M-Instruct", "seq_len": 512, "rows": rows, "summary": summary, "scaling": scaling}


# ---- a 13B-shaped LLaMA ------------------------------------------------------------------------------------------

SHAPES_13B = dict(
    hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip


def write_large(folder: Path, tokenizer_from: str) -> tuple[int, float]:
    """Write the random 13B-shaped LLaMA (bfloat16), one shard per block; (bytes written, seconds)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    from massact.models.checkpoint import empty_model

    began = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_from)
    tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16", **SHAPES_13B,
    )  # fmt: skip
    config.save_pretrained(folder)
    meta = empty_model(transformers.LlamaForCausalLM, config)
    names = [name for name, _ in meta.named_parameters()]
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        key = f"block{int(parts[2]):02d}" if name.startswith("model.layers.") else "rest"
        groups.setdefault(key, []).append(name)
    generator = torch.Generator().manual_seed(0)
    shapes = dict(meta.named_parameters())
    index, written = {}, 0
    for number, (key, members) in enumerate(sorted(groups.items()), start=1):
        file = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in members:
            shape = shapes[name].shape
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
            index[name] = file
            written += tensors[name].numel() * 2
        save_file(tensors, folder / file, metadata={"format": "pt"})
        del tensors
        print(f"  wrote {file} ({key})", flush=True)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": written}, "weight_map": index}, indent=1)
    )
    return written, time.perf_counter() - began


def _drop_page_cache() -> bool:
    """Empty the page cache so that the run reads from storage (root on Linux); whether it worked."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def large(args: argparse.Namespace) -> dict:
    folder = Path(args.folder)
    tokenizer_from = _smollm2_folder()
    print(f"Writing a random 13B-shaped LLaMA to {folder} (bfloat16, one shard per block):", flush=True)
    try:
        written, seconds = write_large(folder, tokenizer_from)
        print(f"  {written / GB:.1f} GB in {seconds:.0f} s", flush=True)
        cold = _drop_page_cache()
        print(f"Scanning 4 windows of 512 tokens block by block (page cache dropped: {cold}):", flush=True)
        row = measure("blocks", str(folder), 4, batch_size=1, threads=args.threads, max_memory=args.max_memory)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    row["checkpoint_bytes"] = written
    row["read_rate_bytes_per_s"] = row["storage_read_bytes"] / row["seconds"]
    row["page_cache_dropped"] = cold
    print(
        f"  peak {row['peak_bytes'] / GB:.2f} GB, {row['seconds']:.0f} s; read {row['storage_read_bytes'] / GB:.1f} GB "
        f"from storage at {row['read_rate_bytes_per_s'] / MB:.0f} MB/s on average over the run",
        flush=True,
    )
    return {"model": "random LLaMA, 13B shapes", "config": SHAPES_13B, "run": row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("smollm2")
    one.add_argument("--samples", type=int, default=16)
    one.add_argument("--batch-size", type=int, default=1)
    one.add_argument("--scaling", default="1,4,16,64", help="window counts, comma-separated ('' to skip)")
    big = commands.add_parser("large")
    big.add_argument("--folder", default="/var/tmp/massact-13b-shaped")
    big.add_argument("--max-memory", default=None)
    inner = commands.add_parser("child")
    inner.add_argument("--mode", choices=["memory", "blocks", "accelerate"], required=True)
    inner.add_argument("--model", required=True)
    inner.add_argument("--samples", type=int, required=True)
    inner.add_argument("--seq-len", type=int, default=512)
    inner.add_argument("--batch-size", type=int, default=1)
    inner.add_argument("--max-memory", default=None)
    for sub in (one, big, inner):
        sub.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.command == "child":
        child(args)
        return
    report = smollm2(args) if args.command == "smollm2" else large(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
