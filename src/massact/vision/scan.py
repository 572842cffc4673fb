"""`scan` over images: every block of a ViT summarised on each image, tokens named CLS / reg / patch(r,c)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from massact.capture.hooks import forward_hooks, output_tensor
from massact.capture.stats import BlockRecord, SequenceRecord, capture_block_stats
from massact.errors import MassactError
from massact.html.registry import result_kind
from massact.html.views.scan import scan_charts
from massact.models.loading import LoadedModel
from massact.models.structure import Structure, find_structure
from massact.progress import bar
from massact.scan import ScanResult, find_massive, summarize_massive
from massact.vision import report
from massact.vision.config import ImageScanConfig
from massact.vision.images import ImageSet, open_image
from massact.vision.pipeline import TokenLayout, VisionPipeline

IMAGE_KIND = "image-scan"  # the `kind` field of an image scan's JSON
HIGH_NORM = 150.0  # the registers paper's "high-norm token" cut-off (it varies by model)


def batches(images: ImageSet, size: int) -> Iterator[tuple[int, list]]:
    """(start index, opened RGB images) in batches of `size`."""
    for start in range(0, len(images), size):
        yield start, [open_image(p) for p in images.paths[start : start + size]]


def _records_topk(records: list[BlockRecord], rank: int) -> list[float]:
    return [
        float(r.top_magnitudes[rank - 1]) if r.top_values.numel() >= rank and not r.all_nonfinite else math.nan
        for r in records
    ]


@result_kind(IMAGE_KIND, "scan.json", view=scan_charts)
@dataclass
class ImageScan:
    """A scan over N images: the first image in the text `ScanResult` contract, plus every image's records."""

    result: ScanResult
    layout: TokenLayout
    images: ImageSet
    records: list[list[BlockRecord]]  # [image][block]
    norms: torch.Tensor  # [image, block, token] L2 norm of each token's block output

    def per_block(self, rank: int | None) -> torch.Tensor:
        """[image, block]: the rank-th largest magnitude (None: the median)."""
        rows = [[r.median for r in recs] if rank is None else _records_topk(recs, rank) for recs in self.records]
        return torch.tensor(rows, dtype=torch.float64)

    def sites_over_images(self) -> list[dict]:
        """Each (token, dim) flagged on any image: on how many images, where, and its typical value."""
        labels, kinds = self.result.tokens, self.result.kinds
        sites: dict[tuple[int, int], dict] = {}
        for index, recs in enumerate(self.records):
            for m in find_massive(recs, labels, kinds):
                site = sites.setdefault((m.token, m.dim), {"images": set(), "blocks": set(), "peaks": {}})
                site["images"].add(index)
                site["blocks"].add(m.block)
                if abs(m.value) > abs(site["peaks"].get(index, 0.0)):
                    site["peaks"][index] = m.value
        rows = []
        for (token, dim), site in sites.items():
            peaks = list(site["peaks"].values())
            rows.append(
                {
                    "token": token,
                    "token_text": labels[token],
                    "token_kind": kinds[token],
                    "dim": dim,
                    "num_images": len(site["images"]),
                    "first_block": min(site["blocks"]),
                    "last_block": max(site["blocks"]),
                    "mean_peak_value": sum(peaks) / len(peaks),
                    "min_peak_magnitude": min(abs(p) for p in peaks),
                    "max_peak_magnitude": max(abs(p) for p in peaks),
                }
            )
        rows.sort(key=lambda s: (-s["num_images"], -abs(s["mean_peak_value"])))
        return rows

    def norm_summary(self, block: int, threshold: float = HIGH_NORM) -> dict:
        """Mean output norm per token kind at `block`, and the tokens above `threshold` on each image."""
        norms = self.norms[:, block]
        kinds = self.result.kinds
        by_kind: dict[str, float] = {}
        for kind in dict.fromkeys(kinds):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            by_kind[kind] = float(norms[:, idx].mean())
        high = [[self.result.tokens[t] for t in (row > threshold).nonzero().reshape(-1).tolist()] for row in norms]
        return {"block": block, "threshold": threshold, "mean_norm_by_kind": by_kind, "high_norm_tokens": high}

    def to_json(self, norm_block: int | None = None) -> dict:
        data = self.result.to_json()
        blocks = len(self.result.records)
        norm_block = blocks - 1 if norm_block is None else norm_block
        stats = {name: self.per_block(rank) for name, rank in (("top1", 1), ("top2", 2), ("top3", 3), ("median", None))}
        data["kind"] = IMAGE_KIND
        data["input"] = "images"
        data["layout"] = {
            "num_cls": self.layout.num_cls,
            "num_registers": self.layout.num_registers,
            "grid": list(self.layout.grid),
        }
        data["images"] = [
            {
                "path": str(path),
                "label": label,
                "num_massive": sum(int(r.massive_values.numel()) for r in recs),
                "top1": [float(v) for v in stats["top1"][i].tolist()],
                "median": [float(v) for v in stats["median"][i].tolist()],
                "norms": [float(v) for v in self.norms[i, norm_block].tolist()],
            }
            for i, (path, label, recs) in enumerate(
                zip(self.images.paths, self.images.label_names(), self.records, strict=True)
            )
        ]
        data["over_images"] = {
            "num_images": len(self.records),
            "blocks": [
                {
                    "index": b,
                    **{f"{name}_mean": float(s[:, b].mean()) for name, s in stats.items()},
                    **{f"{name}_std": float(s[:, b].std(unbiased=False)) for name, s in stats.items()},
                }
                for b in range(blocks)
            ],
            "sites": self.sites_over_images(),
        }
        data["token_norms"] = self.norm_summary(norm_block)
        return data

    def show(self, console: Console) -> None:
        """The first image's block table and one line over all images."""
        report.show_image_scan(self, console)

    def write(self, out: Path) -> None:
        """scan.json, report.md and the figures into `out`."""
        report.write_image_scan_outputs(self, out)


def _norm_hooks(structure: Structure, store: dict[int, torch.Tensor]):
    def hook_for(index: int):
        def hook(module, args, output) -> None:
            hidden = output_tensor(output)
            store[index] = hidden.detach().float().norm(dim=-1).cpu()

        return hook

    return [(block, hook_for(i)) for i, block in enumerate(structure.blocks)]


def run(loaded: LoadedModel, images: ImageSet, config: ImageScanConfig | None = None) -> ImageScan:
    """Scan a vision model on `images` (at most `config.num_images`, spread over the set); the first image's
    scan follows the text `ScanResult` contract."""
    config = config or ImageScanConfig()
    images = images.spread(config.num_images)
    thresholds, top_k, keep, batch_size = config.thresholds, config.top_k, config.keep, config.batch_size
    if len(images) == 0:
        raise MassactError("no images to scan; give `images` from a file or a folder with images")
    pipeline = VisionPipeline(loaded)
    structure = find_structure(pipeline.module, config.blocks_path)
    if keep is not None and not 0 <= keep < len(structure):
        raise MassactError(f"`keep={keep}` is out of range; the model has blocks 0..{len(structure) - 1}")
    records: list[SequenceRecord] = []
    norms: list[torch.Tensor] = []
    pixel_shape: tuple[int, ...] = ()
    with bar(len(images), "scanning images", unit="image", enabled=config.progress) as shown:
        for start, batch in batches(images, batch_size):
            pixels = pipeline.pixels(batch)
            pixel_shape = tuple(pixels.shape)
            keep_set = (keep,) if keep is not None and start == 0 else ()
            store: dict[int, torch.Tensor] = {}
            with capture_block_stats(
                pipeline.module, structure, top_k=top_k, thresholds=thresholds, keep=keep_set
            ) as c:
                with forward_hooks(_norm_hooks(structure, store)):
                    pipeline.forward(pixels)
                records += c.pop()
            norms.append(torch.stack([store[i] for i in range(len(structure))], dim=1))
            shown.update(len(batch))
    first = records[0]
    layout = pipeline.layout(pixel_shape, int(first.positions.numel()))
    labels, kinds = layout.labels(), layout.kinds()
    massive = find_massive(first.blocks, labels, kinds)
    summary = summarize_massive(massive, labels, kinds, thresholds)
    kept = dict(first.kept)
    if config.keep_first_massive and keep is None:
        ratios = [
            abs(float(r.top_values[0])) / r.median if r.median > 0 and not r.all_nonfinite else 0.0
            for r in first.blocks
        ]
        target = summary["first_block"]
        if target is None:
            target = max(range(len(ratios)), key=ratios.__getitem__)
        with capture_block_stats(pipeline.module, structure, top_k=1, thresholds=thresholds, keep=(target,)) as c:
            pipeline.forward(pipeline.pixels([open_image(images.paths[0])]))
            kept = c.pop()[0].kept
    result = ScanResult(
        model=loaded.name,
        structure=structure,
        hidden_size=int(first.blocks[0].dim_max.numel()),
        tokens=labels,
        kinds=kinds,
        thresholds=thresholds,
        records=first.blocks,
        massive=massive,
        summary=summary,
        kept=kept,
        prompt=None,
        dtype=str(pipeline.dtype).removeprefix("torch."),
        source=getattr(loaded, "source", None),
        quantization=getattr(loaded, "quantization", None),
    )
    return ImageScan(
        result=result,
        layout=layout,
        images=images,
        records=[r.blocks for r in records],
        norms=torch.cat(norms),
    )
