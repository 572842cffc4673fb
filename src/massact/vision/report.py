"""Files of an image scan: scan.json, the per-block figure over N images, the 3D view, the norm view, report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console

from massact.format import fmt_activation as _fmt
from massact.format import md_escape
from massact.outputs import write_json
from massact.report.figures import plot_activations_3d, plot_layerwise, save_figure, wrap_title
from massact.scan.result import ScanResult
from massact.vision.images import ImageSet, open_image
from massact.vision.pipeline import TokenLayout


class ImageScanView(Protocol):
    """What the views read of an image scan (a protocol, so that the views import no result)."""

    result: ScanResult
    layout: TokenLayout
    images: ImageSet
    norms: torch.Tensor

    def per_block(self, rank: int | None) -> torch.Tensor: ...

    def sites_over_images(self) -> list[dict]: ...

    def to_json(self, norm_block: int | None = None) -> dict: ...


LAYERWISE_PNG = "layerwise.png"
ACTIVATIONS_PNG = "activations_3d.png"
NORMS_PNG = "token_norms.png"
MAX_NORM_IMAGES = 6


def plot_token_norms(scan: ImageScanView, block: int, path: Path, max_images: int = MAX_NORM_IMAGES) -> Path:
    """Each image above its patch tokens' output norms at `block` on the patch grid; CLS/register norms below.

    The prefix tokens' norms go under each grid, one token per line, so no two panels' texts can meet.
    """
    layout, labels = scan.layout, scan.result.tokens
    count = min(max_images, len(scan.images))
    norms = scan.norms[:count, block].numpy()
    rows, cols = layout.grid
    patch = norms[:, layout.num_prefix :].reshape(count, rows, cols)
    vmax = float(patch.max()) if patch.size else 1.0
    prefix_lines = layout.num_prefix
    height = 5.4 + 0.16 * prefix_lines
    fig = Figure(figsize=(2.8 * count + 1.2, height), dpi=130)
    axes = fig.subplots(2, count, squeeze=False)
    image = None
    for i in range(count):
        name = scan.images.paths[i].name
        axes[0, i].imshow(open_image(scan.images.paths[i]))
        axes[0, i].set_title(name if len(name) <= 24 else name[:21] + "...", fontsize=8)
        image = axes[1, i].imshow(patch[i], cmap="viridis", vmin=0.0, vmax=vmax)
        prefix = "\n".join(f"{labels[t]}: {norms[i, t]:,.0f}" for t in range(layout.num_prefix))
        axes[1, i].set_xlabel(prefix, fontsize=7, linespacing=1.1)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(wrap_title(f"{scan.result.model}: token output norms, block {block}", 120), fontsize=10)
    fig.text(0.01, 0.01, "below each grid: the norms of the class and register tokens", fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 0.9, 0.95))
    if image is not None:
        cax = fig.add_axes((0.92, 0.1, 0.015, 0.35))
        fig.colorbar(image, cax=cax, label="patch token output norm")
    return save_figure(fig, path, tight=False)


def _tokens_for_3d(scan: ImageScanView, limit: int = 24) -> list[int]:
    """Prefix tokens, then every flagged patch, then the first patches, up to `limit`, in sequence order."""
    flagged = [s["token"] for s in scan.result.summary["sites"]]
    order = [*range(scan.layout.num_prefix), *flagged, *range(scan.layout.num_prefix, len(scan.result.tokens))]
    return sorted(list(dict.fromkeys(order))[:limit])


def show_image_scan(scan: ImageScanView, console: Console) -> None:
    """The first image's block table, then the sites flagged over all images."""
    scan.result.show(console)
    sites = scan.sites_over_images()
    flagged = ", ".join(f"{s['token_text']} dim {s['dim']} on {s['num_images']}" for s in sites[:8])
    console.print(f"Over {len(scan.images)} images: {flagged or 'nothing flagged'}", markup=False)


def markdown_report(scan: ImageScanView, data: dict, figures: dict[str, str]) -> str:
    result, over = scan.result, data["over_images"]
    lines = [
        f"# massact scan: {md_escape(result.model)} on {len(scan.images)} images",
        "",
        f"- blocks: {result.num_blocks} (`{result.structure.blocks_path}`), hidden size {result.hidden_size}, "
        f"dtype {result.dtype}",
        f"- tokens: {scan.layout.num_cls} CLS, {scan.layout.num_registers} registers, "
        f"{scan.layout.grid[0]}x{scan.layout.grid[1]} patches",
        f"- criterion: |x| > {result.thresholds.abs:g} and |x| >= {result.thresholds.ratio:g} x block median",
        "",
    ]
    if not over["sites"]:
        lines.append("**No massive activations on any image.**")
    else:
        lines += [
            "| token | kind | dim | images | blocks | mean peak value | peak magnitude range |",
            "|---|---|---:|---:|---|---:|---|",
        ]
        for s in over["sites"]:
            lines.append(
                f"| {s['token_text']} | {s['token_kind']} | {s['dim']} | {s['num_images']}/{over['num_images']} | "
                f"{s['first_block']}-{s['last_block']} | {s['mean_peak_value']:,.1f} | "
                f"{s['min_peak_magnitude']:,.1f} - {s['max_peak_magnitude']:,.1f} |"
            )
    norms = data["token_norms"]
    lines += ["", f"## Token output norms, block {norms['block']}", ""]
    lines += [f"- mean norm of {kind} tokens: {_fmt(value)}" for kind, value in norms["mean_norm_by_kind"].items()]
    high = sum(len(t) for t in norms["high_norm_tokens"])
    lines.append(f"- tokens with norm above {norms['threshold']:g}: {high} over {len(scan.images)} images")
    lines += [
        "",
        "## Per block, mean over images",
        "",
        "| block | top 1 | top 2 | top 3 | median |",
        "|---:|---:|---:|---:|---:|",
    ]
    for b in over["blocks"]:
        lines.append(
            f"| {b['index']} | {_fmt(b['top1_mean'])} | {_fmt(b['top2_mean'])} | {_fmt(b['top3_mean'])} | "
            f"{_fmt(b['median_mean'])} |"
        )
    for caption, name in figures.items():
        lines += ["", f"![{caption}]({name})"]
    return "\n".join(lines) + "\n"


def write_image_scan_outputs(scan: ImageScanView, directory: Path, norm_block: int | None = None) -> list[Path]:
    """scan.json, layerwise.png (mean +- std over images), activations_3d.png, token_norms.png, report.md."""
    data = scan.to_json(norm_block)
    written = [write_json(directory / "scan.json", data)]
    stats = {
        name: scan.per_block(rank).numpy()
        for name, rank in (("top 1", 1), ("top 2", 2), ("top 3", 3), ("median", None))
    }
    written.append(
        plot_layerwise(
            {name: np.nanmean(s, axis=0) for name, s in stats.items()},
            directory / LAYERWISE_PNG,
            title=f"{scan.result.model}: largest activations per block, mean over {len(scan.images)} images",
            spread={name: np.nanstd(s, axis=0) for name, s in stats.items()},
        )
    )
    figures = {f"Top-1/2/3 magnitudes and median per block, mean +- std over {len(scan.images)} images": LAYERWISE_PNG}
    if scan.result.kept:
        block, hidden = next(iter(sorted(scan.result.kept.items())))
        chosen = _tokens_for_3d(scan)
        written.append(
            plot_activations_3d(
                hidden[chosen],
                [scan.result.tokens[t] for t in chosen],
                directory / ACTIVATIONS_PNG,
                title=f"{scan.images.paths[0].name}: block {block} output",
                highlight_dims=scan.result.summary["dims"],
            )
        )
        figures[f"|activation| over tokens x dims, block {block}, first image"] = ACTIVATIONS_PNG
    block = data["token_norms"]["block"]
    written.append(plot_token_norms(scan, block, directory / NORMS_PNG))
    figures[f"Token output norms at block {block} over the patch grid"] = NORMS_PNG
    report = directory / "report.md"
    report.write_text(markdown_report(scan, data, figures), encoding="utf-8")
    written.append(report)
    return written
