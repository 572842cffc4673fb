"""The command-line side of corpus scans: `massact scan --corpus ...` and `massact merge`."""

from __future__ import annotations

import shlex
import sys
from functools import reduce
from pathlib import Path

from massact.commands.common import emit, load_for_cli
from massact.corpus.report import derived, terminal_summary, write_corpus_outputs
from massact.corpus.scan import check_counts, distributed_state, scan_corpus
from massact.corpus.summary import CorpusSummary
from massact.data.corpus import load_texts
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.outputs import check_output_dir


def command_line() -> str:
    return shlex.join(["massact", *sys.argv[1:]])


def show(summary: CorpusSummary, out: Path | None, as_json: bool) -> None:
    """Print the result and write every file to `out` (all or nothing)."""
    emit(
        lambda: derived(summary),
        as_json,
        lambda console: terminal_summary(summary, console),
        out,
        lambda staging: write_corpus_outputs(summary, staging, command_line()),
        "report.md, corpus.json, means.json, summary.* and figures",
    )


def run_corpus_scan(
    *,
    model: str,
    corpus: str,
    samples: int,
    seq_len: int,
    batch_size: int,
    seed: int,
    thresholds: Thresholds,
    top_k: int,
    out: Path | None,
    as_json: bool,
    dtype: str,
    device: str | None,
    device_map: str | None,
    trust_remote_code: bool,
    blocks: str | None,
) -> None:
    """`massact scan MODEL --corpus ...`: aggregate many sequences; data-parallel under accelerate/torchrun."""
    check_counts(samples, seq_len, batch_size)
    if out is not None:
        check_output_dir(out)
    texts = load_texts(corpus)
    state = distributed_state(device)
    if state is not None and state.num_processes > 1:
        if device_map is not None:
            raise MassactError("--device-map does not combine with a data-parallel launch; drop one of them")
        device = "cpu" if state.device.type == "cpu" else str(state.device)  # 'cpu:0' would pick bf16
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    summary = scan_corpus(
        loaded, corpus, samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed,
        thresholds=thresholds, top_k=top_k, blocks_path=blocks, texts=texts, state=state,
    )  # fmt: skip
    if summary is not None:
        show(summary, out, as_json)
    if state is not None:
        state.wait_for_everyone()


def merge_runs(paths: list[Path]) -> CorpusSummary:
    """Merge the summaries of several corpus scan directories."""
    if not paths:
        raise MassactError("give at least one corpus scan directory to merge")
    return reduce(CorpusSummary.merge, [CorpusSummary.load(p) for p in paths]).canonical()
