"""report.md of `massact export`: what was found, and for each file which tool reads it and how."""

from __future__ import annotations

from typing import Protocol

from massact.detect import Thresholds
from massact.export.imatrix import usage as imatrix_usage
from massact.format import fmt_number, md_code, md_escape


class ExportView(Protocol):
    """What report.md reads of an export (a protocol, so that the report imports no result)."""

    model: str
    corpus: str
    windows: list[int]
    seed: int
    thresholds: Thresholds
    act_scales: dict
    mappings: list[list]
    kept: list[str]
    alpha: float
    imatrix: object  # `massact.export.imatrix.Imatrix` or None

    @property
    def has_massive(self) -> bool: ...

    def sites(self) -> dict: ...

    def outlier_tokens(self) -> dict: ...


# format -> (the tool that reads the file, one line on what it is for)
TOOLS = {
    "act-scales": ("SmoothQuant", "per-channel input maxima of every Linear, the input of smoothing"),
    "recipe": ("llm-compressor", "SmoothQuant + GPTQ W8A8 with the Linears that see massive inputs kept"),
    "sites": ("massact intervene --means", "massive sites with their mean over the windows"),
    "outlier-tokens": ("KV-cache tools, e.g. StreamingLLM's start_size", "token ids that carry massive activations"),
    "imatrix": ("llama.cpp llama-quantize --imatrix", "importance matrix: sum of x^2 per input column of each weight"),
}


def tool_line(name: str, file: str) -> str:
    """`act_scales.pt: SmoothQuant (per-channel input maxima ...)` for the terminal."""
    tool, what = TOOLS[name]
    return f"{file}: {tool} ({what})"


def _usage(name: str, file: str, result: ExportView) -> list[str]:
    if name == "imatrix":
        return imatrix_usage(file, result.imatrix)
    if name == "act-scales":
        return [
            "A `torch.save` dict {Linear name: float32 tensor [in_features]}: the largest |x| of each input",
            "channel over every token of the windows, the same statistic and layout as SmoothQuant's",
            "`act_scales/*.pt` (github.com/mit-han-lab/smoothquant, `generate_act_scales.py`):",
            "",
            "```python",
            "import torch",
            "from smoothquant.smooth import smooth_lm",
            "",
            f'smooth_lm(model, torch.load("{file}", weights_only=True), alpha=0.5)',
            "```",
        ]
    if name == "recipe":
        lines = [
            "An llm-compressor recipe: `SmoothQuantModifier` with the norm -> Linear mappings measured on this",
            "model (a norm whose output is itself the input of those Linears), then `GPTQModifier` W8A8 with the",
            "Linears to keep in higher precision as `ignore`:",
            "",
            "```python",
            "from llmcompressor import oneshot",
            "",
            f'oneshot(model="MODEL_DIR", dataset="open_platypus", recipe="{file}",',
            '        max_seq_length=512, num_calibration_samples=512, output_dir="MODEL-W8A8")',
            "```",
            "",
            f"Smoothing strength {result.alpha:g}; {len(result.mappings)} mappings:",
            "",
        ]
        lines += [f"- {md_code(', '.join(balance))} from {md_code(smooth)}" for balance, smooth in result.mappings]
        lines += ["", "Kept in higher precision (`ignore`): the output head, and every Linear whose input"]
        lines += [f"reaches |x| > {result.thresholds.abs:g} (`--abs-threshold`):", ""]
        for module in result.kept:
            peak = result.act_scales.get(module)
            shown = f"input max |x| {fmt_number(float(peak.max()))}" if peak is not None and peak.numel() else "head"
            lines.append(f"- {md_code(module)} ({shown})")
        return lines
    if name == "sites":
        return [
            "The massive sites in the `means.json` layout (with the tokens that carry each), which the",
            "intervention command loads to set each site to its mean:",
            "",
            "```",
            f"massact intervene MODEL --means {file}",
            "```",
        ]
    tokens = result.outlier_tokens()
    first = tokens["first_position"]
    return [
        "Token ids that carry a massive activation, most frequent first, with how often each does so at a",
        f"window's first position. Here {first['carrying']} of {first['windows']} windows carry one on their first",
        "token: a KV-cache that evicts tokens should keep that position (StreamingLLM's `start_size=1`),",
        "and a tool that keeps outliers in full precision can read the ids from `tokens[].token_id`.",
    ]


def export_markdown(result: ExportView, formats: list[str], files: dict[str, str]) -> str:
    """The export's report.md."""
    samples, seq_len = result.windows
    t = result.thresholds
    lines = [
        f"# massact export: {md_escape(result.model)}",
        "",
        f"{samples} windows of {seq_len} tokens of {md_code(result.corpus)} (seed {result.seed}); massive means "
        f"|x| > {t.abs:g} and >= {t.ratio:g} x the block median.",
        "",
        "## Found",
        "",
    ]
    if result.has_massive:
        sites = result.sites()
        tokens = result.outlier_tokens()["tokens"]
        lines += [
            f"{len(sites['sites'])} massive sites in dim{'s' if len(sites['dims']) > 1 else ''} "
            f"{', '.join(map(str, sites['dims']))}, blocks "
            f"{sites['blocks'][0]}..{sites['blocks'][-1]}; {len(tokens)} token ids carry them.",
            "",
            "| token id | token | carries | at first position | elsewhere | max \\|x\\| |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['token_id']} | {md_code(r['token'])} | {r['count']} | {r['at_first_position']} | "
            f"{r['elsewhere']} | {fmt_number(r['max_abs'])} |"
            for r in tokens[:10]
        ]
    else:
        lines.append("No massive activations: the site and token lists are empty.")
    lines += ["", "## Files and how to use them", ""]
    for name in formats:
        tool, _ = TOOLS[name]
        lines += [f"### {files[name]}: {tool}", "", *_usage(name, files[name], result), ""]
    return "\n".join(lines)
