"""`massact scan`: locate massive activations on a prompt (or a corpus, or images)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from massact.commands.common import (
    ModelOptions,
    Opt,
    ThresholdOptions,
    emit_result,
    install_help,
    model_command,
    read_prompt,
)
from massact.defaults import DEFAULT_PROMPT
from massact.errors import MassactError
from massact.validate import check_prompt


@model_command
def scan_command(
    model: Opt.Model = "default",
    prompt: Annotated[str | None, typer.Option("--prompt", help="Text to scan.")] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="Read the prompt from a UTF-8 file.")] = None,
    no_special_tokens: Annotated[
        bool, typer.Option("--no-special-tokens", help="Tokenize without BOS/EOS and other special tokens.")
    ] = False,
    detection: ThresholdOptions = ThresholdOptions(),
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Largest activations kept per block.")] = 16,
    keep: Annotated[
        int | None,
        typer.Option("--keep", help="Keep this block's output for the 3D figure (default: the largest massive one's)."),
    ] = None,
    out: Opt.Out = None,
    as_json: Opt.Json = False,
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
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="Corpus: scan part i of n of the drawn windows (i/n), to merge later."),
    ] = None,
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            help=f"Scan a vision model on an image, a folder of images, or 'samples' ({install_help('vision')}).",
        ),
    ] = None,
    num_images: Annotated[
        int | None, typer.Option("--num-images", min=1, help="Images: scan at most this many.")
    ] = None,
    *,
    opts: ModelOptions,
) -> None:
    """Find the massive activations of MODEL: blocks, dims, tokens, values, ratio to the median."""
    thresholds = detection.thresholds()
    if corpus is not None and images is not None:
        raise MassactError("give --corpus (text) or --images (vision), not both")
    if corpus is not None:
        if prompt is not None or text_file is not None or keep is not None:
            raise MassactError("--corpus scans many sequences; drop --prompt/--text-file/--keep, or drop --corpus")
        from massact.corpus import CorpusConfig, CorpusInputs, parse_shard
        from massact.corpus import run as run_corpus
        from massact.corpus.distributed import launch_device, wait_for_everyone

        config = CorpusConfig(
            samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed, thresholds=thresholds, top_k=top_k,
            add_special_tokens=not no_special_tokens, shard=parse_shard(shard), blocks_path=opts.blocks,
        )  # fmt: skip
        inputs = CorpusInputs.read(corpus)  # a bad corpus fails before the model loads
        device = launch_device(opts.device, opts.device_map, config.shard)
        loaded = replace(opts, device=device).load(model, batch=min(batch_size, samples), tokens=seq_len)
        result = run_corpus(loaded, inputs, config)
        if result.is_main:  # every process of a data-parallel run has the result; the main one writes it
            result.command = shlex.join(["massact", *sys.argv[1:]])
            emit_result(result, out, as_json)
        wait_for_everyone()
        return
    if images is not None:
        if prompt is not None or text_file is not None:
            raise MassactError("give --images or --prompt/--text-file, not both")
        from massact.vision import ImageScanConfig, find_images
        from massact.vision import run as run_images

        image_config = ImageScanConfig(
            thresholds=thresholds, top_k=top_k, keep=keep, keep_first_massive=out is not None, batch_size=batch_size,
            num_images=num_images, blocks_path=opts.blocks, progress=not as_json,
        )  # fmt: skip
        image_set = find_images(images)
        loaded = opts.load(model, batch=batch_size)  # images: tokens per image unknown until preprocessed
        emit_result(run_images(loaded, image_set, image_config), out, as_json)
        return
    text = read_prompt(prompt, text_file, DEFAULT_PROMPT)
    check_prompt(text)
    from massact.scan import ScanConfig, run
    from massact.vision.pipeline import refuse_prompt_for_vision

    config = ScanConfig(
        thresholds=thresholds,
        top_k=top_k,
        keep=keep,
        keep_peak=out is not None,
        add_special_tokens=not no_special_tokens,
        blocks_path=opts.blocks,
    )
    loaded = opts.load(model, batch=1)  # one prompt; its length is known once tokenized
    refuse_prompt_for_vision(loaded)
    emit_result(run(loaded, text, config), out, as_json)


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)
