"""`massact trace`: which sub-layer and which weight entries write each massive activation."""

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
from massact.models.structure import find_structure
from massact.outputs import check_output_dir
from massact.quant_risk import capture_quant_risk, quant_risk
from massact.scan import DEFAULT_PROMPT
from massact.trace import trace
from massact.trace.report import terminal_report, write_trace_outputs
from massact.trace.verify import verify_trace


def trace_command(
    model: ModelArg = "default",
    prompt: Annotated[str | None, typer.Option("--prompt", help="Text whose massive sites are traced.")] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="Read the prompt from a UTF-8 file.")] = None,
    no_special_tokens: Annotated[bool, typer.Option("--no-special-tokens", help="Tokenize without BOS/EOS.")] = False,
    token: Annotated[int | None, typer.Option("--token", help="Trace this token position (with --dim).")] = None,
    dim: Annotated[int | None, typer.Option("--dim", help="Trace this feature dim, massive or not.")] = None,
    block: Annotated[
        int | None, typer.Option("--block", help="Trace the update of this block (default: the largest jump).")
    ] = None,
    max_sites: Annotated[int, typer.Option("--max-sites", min=1, help="Trace at most this many sites.")] = 4,
    top: Annotated[int, typer.Option("--top", min=1, help="Weight entries listed per site.")] = 10,
    share: Annotated[
        float, typer.Option("--share", help="Report how many entries explain this share of the jump.")
    ] = 0.9,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Zero the entries, measure, restore (needs a corpus).")
    ] = True,
    corpus: Annotated[
        str, typer.Option("--corpus", help="Corpus for perplexity and the quantization table.")
    ] = "shakespeare",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Corpus windows.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", min=2, help="Tokens per window.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per forward pass.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the windows and the control entries.")] = 0,
    abs_threshold: AbsThresholdOpt = 100.0,
    ratio_threshold: RatioThresholdOpt = 1000.0,
    out: OutOpt = None,
    as_json: JsonOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    blocks: BlocksOpt = None,
) -> None:
    """Trace each massive activation of MODEL to the sub-layer and weight entries that write it, and verify."""
    thresholds = Thresholds(abs=abs_threshold, ratio=ratio_threshold)
    text = read_prompt(prompt, text_file, DEFAULT_PROMPT)
    if not 0 < share <= 1:
        raise MassactError(f"--share {share}: must be in (0, 1], e.g. 0.9")
    if out is not None:
        check_output_dir(out)
    loaded = load_for_cli(model, dtype, device, device_map, trust_remote_code)
    result = trace(
        loaded,
        text,
        thresholds=thresholds,
        max_sites=max_sites,
        top=top,
        share=share,
        token=token,
        dim=dim,
        block=block,
        add_special_tokens=not no_special_tokens,
        blocks_path=blocks,
    )
    structure = find_structure(loaded.model, blocks)
    from massact.data.corpus import load_windows

    windows = load_windows(loaded.tokenizer, corpus=corpus, samples=samples, seq_len=seq_len, seed=seed)
    risk: dict = {}

    def collect_risk():
        return _RiskInto(capture_quant_risk(loaded.model, structure, thresholds), risk)

    if verify and result.sites:
        result.verification = verify_trace(
            loaded,
            result,
            windows=windows,
            batch_size=batch_size,
            seed=seed,
            blocks_path=blocks,
            on_original=collect_risk,
        )
    result.quant_risk = risk.get("rows") or quant_risk(
        loaded.model, structure, list(windows.split(batch_size)), thresholds
    )
    emit(
        result.to_json,
        as_json,
        lambda console: terminal_report(result, console, limit=top),
        out,
        lambda staging: write_trace_outputs(result, staging),
        "trace.json and report.md",
    )


class _RiskInto:
    """Enter a quant-risk capture; on exit store its rows in `into['rows']`."""

    def __init__(self, manager, into: dict) -> None:
        self.manager, self.into = manager, into

    def __enter__(self):
        self.collector = self.manager.__enter__()
        return self.collector

    def __exit__(self, *exc) -> bool:
        self.manager.__exit__(*exc)
        if exc[0] is None:
            self.into["rows"] = self.collector.rows()
        return False


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
