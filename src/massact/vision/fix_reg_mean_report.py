"""The terminal table, Markdown report and files of a Fix-Reg-Mean run."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from safetensors.torch import save_file

from massact.format import md_escape
from massact.outputs import write_json
from massact.report.tables import numeric_column, print_table


class RegisterMeansView(Protocol):
    """The register means a run keeps: [block, register, hidden], their positions, over how many images."""

    means: torch.Tensor
    positions: list[int]
    num_images: int


class FixRegMeanView(Protocol):
    """What the views read of a Fix-Reg-Mean result (a protocol, so that the views import no result)."""

    model: str
    num_registers: int
    note: str
    means: RegisterMeansView | None

    def to_json(self) -> dict: ...


COLUMNS = (
    ("top1", "top-1"),
    ("prediction_agreement", "agrees w/ original"),
    ("relative_logit_change", "rel. logit change"),
    ("feature_cosine", "feature cosine"),
    ("knn_accuracy", "k-NN acc"),
    ("knn_agreement", "k-NN agrees w/ original"),
)


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    return [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    return f"{value:.4f}" if key in ("relative_logit_change", "feature_cosine") else f"{100 * value:.1f}"


def markdown_table(data: dict) -> str:
    """The result as a Markdown table like the paper's (percentages, cosine and logit change as fractions)."""
    columns = _columns(data["settings"])
    lines = [
        f"# Fix-Reg-Mean: {md_escape(data['model'])}",
        "",
        f"- {data['num_registers']} register tokens replaced at all {data['num_blocks']} blocks by their mean "
        f"over {data['mean_images']} images; evaluated on {data['eval_images']} images (k-NN: k={data['k']})",
        "",
        "| setting | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [
        "| " + row["setting"] + " | " + " | ".join(_cell(row, k) for k, _ in columns) + " |" for row in data["settings"]
    ]
    if data["note"]:
        lines += ["", f"Note: {md_escape(data['note'])}."]
    return "\n".join(lines) + "\n"


def show_fix_reg_mean(result: FixRegMeanView, console: Console) -> None:
    data = result.to_json()
    columns = _columns(data["settings"])
    table = Table(
        title=f"Fix-Reg-Mean: {escape(result.model)} ({result.num_registers} registers)", title_justify="left"
    )
    table.add_column("setting", no_wrap=True)
    for _, title in columns:
        numeric_column(table, title)
    for row in data["settings"]:
        table.add_row(row["setting"], *(_cell(row, key) for key, _ in columns))
    print_table(console, table)
    if result.note:
        console.print(f"Note: {result.note}.", markup=False)


def write_fix_reg_mean(result: FixRegMeanView, out: Path) -> None:
    """fix_reg_mean.json, register_means.safetensors and report.md into `out`."""
    data = result.to_json()
    write_json(out / "fix_reg_mean.json", data)
    if result.means is not None:
        means = result.means
        save_file(
            {"means": means.means.contiguous()},
            str(out / "register_means.safetensors"),
            metadata={"positions": ",".join(map(str, means.positions)), "images": str(means.num_images)},
        )
    (out / "report.md").write_text(markdown_table(data), encoding="utf-8")
