"""The atlas chart: every model's peak ratio per block on one normalized depth axis."""

from __future__ import annotations

from massact.html.charts import Chart, finite, label_text, log_axis, number_text


def is_atlas(data: dict) -> bool:
    return isinstance(data.get("models"), list) and str(data.get("format", "")).startswith("massact-atlas")


def atlas_charts(data: dict) -> list[Chart]:
    """Peak ratio per block of every model on one normalized depth axis (block / (blocks - 1))."""
    traces = []
    for row in data["models"]:
        curve = row.get("block_peak_ratio") or []
        if not curve:
            continue
        depth = [i / max(len(curve) - 1, 1) for i in range(len(curve))]
        name = label_text(row.get("model", "?"))
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": depth,
                "y": [finite(v) for v in curve],
                "customdata": [[name, i, number_text(v)] for i, v in enumerate(curve)],
                "hovertemplate": "%{customdata[0]}<br>block %{customdata[1]}<br>peak / median %{customdata[2]}"
                "<extra></extra>",
            }
        )
    if not traces:
        return []
    layout = {"xaxis": {"title": {"text": "depth (block / last block)"}}, "yaxis": log_axis("top-1 |x| / median")}
    return [Chart("atlas-depth", "peak ratio per block, all models", traces, layout, ("comparison.png",))]
