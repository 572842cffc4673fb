"""Charts for any result: per-block series, per-block rows, traced sites' trajectories."""

from __future__ import annotations

import html

from massact.html.charts import INDEX_KEYS, Chart, finite, log_axis, measure_picker_chart, number_text, token_label


def _row_index(row: dict, position: int):
    return next((row[k] for k in INDEX_KEYS if isinstance(row.get(k), int)), position)


def _numeric_fields(table: list[dict]) -> list[str]:
    return [
        k
        for k in table[0]
        if k not in INDEX_KEYS
        and not isinstance(table[0][k], bool)
        and any(finite(r.get(k)) is not None for r in table)
        and all(r.get(k) is None or isinstance(r.get(k), (int, float, str)) for r in table)
    ]


def _consecutive(indices: list) -> bool:
    return all(isinstance(i, int) for i in indices) and indices == list(range(indices[0], indices[0] + len(indices)))


def _block_table(value) -> bool:
    """A list of rows, one per block in order (its `block` or `index` runs 0, 1, 2, ...), with numbers."""
    return (
        isinstance(value, list)
        and len(value) > 1
        and all(isinstance(r, dict) for r in value)
        and any(k in value[0] for k in INDEX_KEYS)
        and _consecutive([_row_index(r, -1) for r in value])
        and bool(_numeric_fields(value))
    )


def block_tables(data: dict, limit: int = 4) -> list[Chart]:
    """Any list of per-block rows in the JSON (at the top or one level down) as a measure-picker chart."""
    found: list[tuple[str, list[dict]]] = []
    for key, value in data.items():
        if _block_table(value):
            found.append((key, value))
        elif isinstance(value, dict):
            found += [(f"{key}.{k}", v) for k, v in value.items() if _block_table(v)]
    charts = []
    for key, table in found[:limit]:
        fields = _numeric_fields(table)
        xs = [_row_index(r, i) for i, r in enumerate(table)]
        series = {f: [r.get(f) for r in table] for f in fields}
        chart = measure_picker_chart(f"table-{len(charts)}", f"{key} per block", xs, series, "block", "block")
        if chart:
            charts.append(chart)
    return charts


def _numbers(value) -> bool:
    return isinstance(value, list) and len(value) > 1 and all(v is None or finite(v) is not None for v in value)


def _series(value) -> tuple[list, list | None] | None:
    """A per-block series: a list of numbers, or {"mean": [...], "std": [...]} (std optional)."""
    if _numbers(value):
        return value, None
    if isinstance(value, dict) and _numbers(value.get("mean")):
        std = value.get("std")
        return value["mean"], std if _numbers(std) and len(std) == len(value["mean"]) else None
    return None


def series_groups(data: dict, limit: int = 4) -> list[Chart]:
    """Any object of named per-block series in the JSON (e.g. corpus layerwise means) as one chart of lines.

    The chart stands in for the figure named after its key (`layerwise` -> layerwise.png).
    """
    charts = []
    for key, value in data.items():
        if not isinstance(value, dict) or len(charts) >= limit:
            continue
        found = {name: _series(v) for name, v in value.items()}
        found = {name: s for name, s in found.items() if s is not None}
        if not found or len(found) != len(value) or len({len(s[0]) for s in found.values()}) != 1:
            continue
        traces = []
        for name, (ys, std) in found.items():
            label = html.escape(str(name))
            spread = [number_text(v) for v in std] if std else ["-"] * len(ys)
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": label,
                    "x": list(range(len(ys))),
                    "y": [finite(v) for v in ys],
                    "error_y": {"type": "data", "array": [finite(v) for v in std], "visible": True} if std else None,
                    "customdata": [[i, number_text(v), sd] for i, (v, sd) in enumerate(zip(ys, spread))],
                    "hovertemplate": f"block %{{customdata[0]}}<br>{label} %{{customdata[1]}} (std %{{customdata[2]}})"
                    "<extra></extra>",
                }
            )
        positive = all((finite(v) or 0) > 0 for ys, _ in found.values() for v in ys if finite(v) is not None)
        layout = {"xaxis": {"title": {"text": "block"}, "dtick": 1}, "yaxis": log_axis(key) if positive else {}}
        charts.append(Chart(f"series-{key}", f"{key} per block", traces, layout, (f"{key}.png",)))
    return charts


def site_trajectories(data: dict) -> list[Chart]:
    """Each traced site's value at every block output (trace), one line per site."""
    sites = [s for s in data.get("sites") or [] if isinstance(s, dict) and _numbers(s.get("trajectory"))]
    tokens = data.get("tokens") or []
    traces = []
    for site in sites:
        name = f"token {token_label(tokens, site.get('token'))}, dim {site.get('dim')}"
        ys = site["trajectory"]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": list(range(len(ys))),
                "y": [finite(v) for v in ys],
                "customdata": [[i, number_text(v)] for i, v in enumerate(ys)],
                "hovertemplate": f"{name}<br>block %{{customdata[0]}}<br>value %{{customdata[1]}}<extra></extra>",
            }
        )
    if not traces:
        return []
    layout = {"xaxis": {"title": {"text": "block"}, "dtick": 1}, "yaxis": {"title": {"text": "value"}}}
    return [Chart("trace-trajectories", "each site's value at every block output", traces, layout)]
