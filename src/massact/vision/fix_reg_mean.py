"""Fix-Reg-Mean: every block's register-token outputs replaced by their mean over an image set.

Means are collected on the unmodified model; the evaluation then runs three settings on the eval
images: the original model, Fix-Reg-Mean, and (as the control that shows registers matter) zeroed
registers. Classifiers report top-1 accuracy and agreement with the original predictions; models
without a head report cosine similarity of the final features and k-NN label agreement.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from massact.capture.hooks import forward_hooks, output_tensor, replace_output_tensor
from massact.errors import MassactError
from massact.html.registry import result_kind
from massact.models.loading import LoadedModel
from massact.models.structure import Structure, find_structure
from massact.progress import bar
from massact.vision import fix_reg_mean_report
from massact.vision.config import FixRegMeanConfig
from massact.vision.images import ImageSet
from massact.vision.pipeline import TokenLayout, VisionPipeline
from massact.vision.scan import batches

KIND = "fix-reg-mean"  # the `kind` field of the JSON: which result this is

SETTINGS = ("original", "fix-reg-mean", "zero-registers")


@dataclass
class RegisterMeans:
    """[block, register, hidden] mean output of each register token, over `num_images` images."""

    means: torch.Tensor
    positions: list[int]
    num_images: int


def _layout(pipeline: VisionPipeline, structure: Structure, images: ImageSet) -> TokenLayout:
    seen: dict[str, int] = {}

    def hook(module, args, output) -> None:
        seen["tokens"] = output_tensor(output).shape[-2]

    pixels = pipeline.pixels([next(batches(images.take(1), 1))[1][0]])
    with forward_hooks([(structure.blocks[0], hook)]):
        pipeline.forward(pixels)
    return pipeline.layout(pixels.shape, seen["tokens"])


def collect_register_means(
    pipeline: VisionPipeline, structure: Structure, positions: list[int], images: ImageSet, batch_size: int = 8
) -> RegisterMeans:
    """Stream the per-block mean of the register outputs over `images` (float64 sums)."""
    sums: list[torch.Tensor | None] = [None] * len(structure)
    count = 0

    def hook_for(index: int):
        def hook(module, args, output) -> None:
            part = output_tensor(output)[:, positions].detach().double().sum(0).cpu()
            sums[index] = part if sums[index] is None else sums[index] + part

        return hook

    with (
        forward_hooks([(block, hook_for(i)) for i, block in enumerate(structure.blocks)]),
        bar(len(images), "register means", unit="image") as shown,
    ):
        for _, batch in batches(images, batch_size):
            pipeline.forward(pipeline.pixels(batch))
            count += len(batch)
            shown.update(len(batch))
    return RegisterMeans(torch.stack(sums).float() / count, positions, count)  # type: ignore[arg-type]


@contextmanager
def replaced_registers(structure: Structure, positions: list[int], values: torch.Tensor) -> Iterator[None]:
    """While active, block i outputs `values[i]` ([register, hidden]) at the register positions."""

    def hook_for(index: int):
        def hook(module, args, output):
            hidden = output_tensor(output)
            new = hidden.clone()
            new[:, positions] = values[index].to(hidden.device, hidden.dtype)
            return replace_output_tensor(output, new)

        return hook

    with forward_hooks([(block, hook_for(i)) for i, block in enumerate(structure.blocks)]):
        yield


@dataclass
class EvalOutputs:
    logits: torch.Tensor | None
    features: torch.Tensor


def _run(pipeline: VisionPipeline, images: ImageSet, batch_size: int, desc: str) -> EvalOutputs:
    logits, features = [], []
    with bar(len(images), desc, unit="image") as shown:
        for _, batch in batches(images, batch_size):
            lg, feat = pipeline.features(pipeline.forward(pipeline.pixels(batch)))
            if lg is not None:
                logits.append(lg.cpu())
            features.append(feat.cpu())
            shown.update(len(batch))
    return EvalOutputs(torch.cat(logits) if logits else None, torch.cat(features))


def knn_predict(features: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out k-NN (cosine similarity, majority vote, ties to the nearest) label of each row."""
    x = F.normalize(features.double(), dim=-1)
    sims = x @ x.T
    sims.fill_diagonal_(-float("inf"))
    k = min(k, len(labels) - 1)
    nearest = sims.topk(k, dim=-1).indices
    votes = labels[nearest]
    predictions = []
    for row in votes:
        counts = torch.bincount(row, minlength=int(labels.max()) + 1)
        best = (counts == counts.max()).nonzero().reshape(-1).tolist()
        predictions.append(next(int(v) for v in row.tolist() if v in best))
    return torch.tensor(predictions)


def model_label_ids(config, classes: list[str]) -> list[int] | None:
    """The model's class id for each folder name (its id, its label, or one of its comma-separated names)."""
    id2label = getattr(config, "id2label", None) or {}
    names: dict[str, int] = {}
    for index, label in id2label.items():
        for name in str(label).split(","):
            names.setdefault(name.strip().lower().replace("_", " "), int(index))
    ids = []
    for cls in classes:
        key = cls.strip().lower().replace("_", " ")
        if key.isdigit() and int(key) in {int(i) for i in id2label}:
            ids.append(int(key))
        elif key in names:
            ids.append(names[key])
        else:
            return None
    return ids


@result_kind(KIND, "fix_reg_mean.json")
@dataclass
class FixRegMeanResult:
    """The three settings compared on the eval images, and the register means used."""

    model: str
    num_registers: int
    num_blocks: int
    mean_images: int
    eval_images: int
    classifier: bool
    k: int
    rows: list[dict] = field(default_factory=list)
    note: str = ""
    means: RegisterMeans | None = None

    def to_json(self) -> dict:
        return {
            "kind": KIND,
            "model": self.model,
            "num_registers": self.num_registers,
            "num_blocks": self.num_blocks,
            "mean_images": self.mean_images,
            "eval_images": self.eval_images,
            "classifier": self.classifier,
            "k": self.k,
            "settings": self.rows,
            "note": self.note,
        }

    def show(self, console: Console) -> None:
        fix_reg_mean_report.show_fix_reg_mean(self, console)

    def write(self, out: Path) -> None:
        """fix_reg_mean.json, register_means.safetensors and report.md into `out`."""
        fix_reg_mean_report.write_fix_reg_mean(self, out)


def _metrics(out: EvalOutputs, base: EvalOutputs, labels: torch.Tensor | None, label_ids, k: int, base_knn) -> dict:
    row: dict = {"feature_cosine": float(F.cosine_similarity(out.features, base.features, dim=-1).mean())}
    if out.logits is not None and base.logits is not None:
        pred, base_pred = out.logits.argmax(-1), base.logits.argmax(-1)
        row["prediction_agreement"] = float((pred == base_pred).double().mean())
        change = (out.logits - base.logits).norm(dim=-1) / base.logits.norm(dim=-1).clamp_min(1e-12)
        row["relative_logit_change"] = float(change.mean())
        if labels is not None and label_ids is not None:
            truth = torch.tensor(label_ids)[labels]
            row["top1"] = float((pred == truth).double().mean())
    if labels is not None and len(labels) > 1:
        knn = knn_predict(out.features, labels, k)
        row["knn_accuracy"] = float((knn == labels).double().mean())
        row["knn_agreement"] = float((knn == base_knn).double().mean()) if base_knn is not None else 1.0
        row["_knn"] = knn
    return row


def fix_reg_mean(
    loaded: LoadedModel,
    mean_images: ImageSet,
    eval_images: ImageSet,
    *,
    k: int = 5,
    batch_size: int = 8,
    blocks_path: str | None = None,
) -> tuple[FixRegMeanResult, RegisterMeans]:
    """Collect register means on `mean_images`, then compare the three settings on `eval_images`."""
    pipeline = VisionPipeline(loaded)
    structure = find_structure(pipeline.module, blocks_path)
    layout = _layout(pipeline, structure, mean_images)
    if layout.num_registers == 0:
        raise MassactError(
            f"{loaded.name} has no register tokens; Fix-Reg-Mean needs a ViT with registers "
            "(e.g. DINOv2 with registers, timm *_reg4_* models)"
        )
    means = collect_register_means(pipeline, structure, layout.register_positions, mean_images, batch_size)
    labels = torch.tensor(eval_images.labels) if eval_images.labels is not None else None
    label_ids = (
        model_label_ids(getattr(pipeline.module, "config", None), eval_images.classes) if labels is not None else None
    )
    outputs = {"original": _run(pipeline, eval_images, batch_size, "original")}
    with replaced_registers(structure, means.positions, means.means):
        outputs["fix-reg-mean"] = _run(pipeline, eval_images, batch_size, "fix-reg-mean")
    with replaced_registers(structure, means.positions, torch.zeros_like(means.means)):
        outputs["zero-registers"] = _run(pipeline, eval_images, batch_size, "zero registers")
    base = outputs["original"]
    result = FixRegMeanResult(
        model=loaded.name,
        num_registers=layout.num_registers,
        num_blocks=len(structure),
        mean_images=means.num_images,
        eval_images=len(eval_images),
        classifier=base.logits is not None,
        k=k,
    )
    base_knn = None
    for setting in SETTINGS:
        row = _metrics(outputs[setting], base, labels, label_ids, k, base_knn)
        if setting == "original":
            base_knn = row.get("_knn")
        row.pop("_knn", None)
        result.rows.append({"setting": setting, **row})
    if base.logits is not None and labels is not None and label_ids is None:
        result.note = "the eval class folders do not name the model's labels, so top-1 accuracy is not reported"
    if labels is None:
        result.note = "the eval images are not a labelled folder, so k-NN accuracy is not reported"
    result.means = means
    return result, means


def run(
    loaded: LoadedModel, images: tuple[ImageSet, ImageSet], config: FixRegMeanConfig | None = None
) -> FixRegMeanResult:
    """Fix-Reg-Mean on `images` = (images for the means, images to evaluate on)."""
    config = config or FixRegMeanConfig()
    mean_images, eval_images = images
    result, _ = fix_reg_mean(
        loaded,
        mean_images.spread(config.samples),
        eval_images,
        k=config.k,
        batch_size=config.batch_size,
        blocks_path=config.blocks_path,
    )
    return result
