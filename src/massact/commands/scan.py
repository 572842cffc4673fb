"""`massact scan`: locate massive activations on a prompt (or a corpus, or images)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import (
    AbsThresholdOpt,
    BlocksOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelArg,
    OutOpt,
    RatioThresholdOpt,
    TrustOpt,
    emit,
    load_for_cli,
    read_prompt,
)
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.outputs import check_output_dir
from massact.report.scan_report import terminal_summary, write_scan_outputs
from massact.scan import DEFAULT_PROMPT, scan


def scan_command(
    model: ModelArg = "default",
    prompt: Annotated[str | None, typer.Option("--prompt", help="Text to scan.")] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="Read the prompt from a UTF-8 file.")] = None,
    no_special_tokens: Annotated[
        bool, typer.Option("--no-special-tokens", help="Tokenize without BOS/EOS and other special tokens.")
    ] = False,
    abs_threshold: AbsThresholdOpt = 100.0,
    ratio_threshold: RatioThresholdOpt = 1000.0,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Largest activations kept per block.")] = 16,
    keep: Annotated[
        int | None, typer.Option("--keep", help="Keep this block's output for the 3D figure (default: first massive).")
    ] = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    blocks: BlocksOpt = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            "--corpus",
            help="Scan many sequences of a corpus: shakespeare (offline), wikitext, c4, pg19, redpajama, "
            "a .txt file, a folder of .txt files or a .jsonl with a 'text' field.",
        ),
    ] = None,
    samples: Annotated[int, typer.Option("--samples", help="Corpus: number of sequences.")] = 64,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Corpus: tokens per sequence.")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Corpus: sequences per forward pass.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Corpus: which windows of the corpus are drawn.")] = 0,
    images: Annotated[
        str | None,
        typer.Option("--images", help="Scan a vision model on an image, a folder of images, or 'samples'."),
    ] = None,
    num_images: Annotated[
        int | None, typer.Option("--num-images", min=1, help="Images: scan at most this many.")
    ] = None,
) -> None:
    """Find the massive activations of MODEL: blocks, dims, tokens, values, ratio to the median."""
    thresholds = Thresholds(abs=abs_threshold, ratio=ratio_threshold)
    if corpus is not None and images is not None:
        raise MassactError("give --corpus (text) or --images (vision), not both")
    if corpus is not None:
        if prompt is not None or text_file is not None or keep is not None:
            raise MassactError("--corpus scans many sequences; drop --prompt/--text-file/--keep, or drop --corpus")
        from massact.corpus.cli import run_corpus_scan

        run_corpus_scan(
            model=model, corpus=corpus, samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed,
            thresholds=thresholds, top_k=top_k, out=out, as_json=as_json, dtype=dtype, device=device,
            device_map=device_map, trust_remote_code=trust_remote_code, blocks=blocks,
        )  # fmt: skip
        return
    if images is not None:
        from massact.vision.cli import run_image_scan

        run_image_scan(
            model=model, images=images, num_images=num_images, prompt_given=prompt is not None or text_file is not None,
            thresholds=thresholds, top_k=top_k, keep=keep, batch_size=batch_size, out=out, as_json=as_json,
            dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code, blocks=blocks,
        )  # fmt: skip
        return
    text = read_prompt(prompt, text_file, DEFAULT_PROMPT)
    if not text.strip():
        raise MassactError("the prompt is empty; give --prompt TEXT (or --text-file PATH) with some text")
    if out is not None:
        check_output_dir(out)
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    from massact.vision.pipeline import refuse_prompt_for_vision

    refuse_prompt_for_vision(loaded)
    result = scan(
        loaded,
        text,
        thresholds=thresholds,
        top_k=top_k,
        keep=keep,
        keep_first_massive=out is not None,
        add_special_tokens=not no_special_tokens,
        blocks_path=blocks,
    )
    emit(
        result.to_json,
        as_json,
        lambda console: terminal_summary(result, console),
        out,
        lambda staging: write_scan_outputs(result, staging),
        "scan.json, report.md and figures",
    )


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)
