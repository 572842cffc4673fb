"""Quantization charts: perplexity per scheme with a strategy picker, per-block sensitivity."""

from __future__ import annotations

import html

from massact.html.charts import Chart, finite, log_axis, number_text, picker
from massact.html.views.tables import block_tables


def is_quant(data: dict) -> bool:
    rows = data.get("rows")
    return isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) and "strategy" in r for r in rows)


def quant_perplexity(data: dict) -> Chart:
    """Perplexity per scheme, one bar group per strategy; the picker shows every strategy or one."""
    rows = data["rows"]
    strategies = list(dict.fromkeys(str(r["strategy"]) for r in rows))
    traces = []
    for strategy in strategies:
        chosen = [r for r in rows if str(r["strategy"]) == strategy]
        traces.append(
            {
                "type": "bar",
                "name": html.escape(strategy),
                "x": [html.escape(str(r.get("scheme"))) for r in chosen],
                "y": [finite(r.get("perplexity")) for r in chosen],
                "customdata": [
                    [html.escape(str(r.get("scheme"))), number_text(r.get("perplexity")), number_text(r.get("ratio"))]
                    for r in chosen
                ],
                "hovertemplate": f"scheme %{{customdata[0]}}<br>strategy {html.escape(strategy)}<br>"
                "perplexity %{customdata[1]}<br>vs unquantized %{customdata[2]}<extra></extra>",
            }
        )
    baseline = finite((data.get("baseline") or {}).get("perplexity"))
    shapes = (
        [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": baseline, "y1": baseline, "line": {"dash": "dash"}}]
        if baseline
        else []
    )
    everything = list(range(len(strategies)))
    layout = {
        "barmode": "group",
        "yaxis": log_axis("perplexity"),
        "shapes": shapes,
        "updatemenus": [picker(["all strategies", *strategies], [everything, *[[i] for i in everything]], len(traces))],
    }
    title = "perplexity per scheme and strategy (dashed: unquantized)"
    return Chart("quant-perplexity", title, traces, layout, ("perplexity.png",))


def quant_charts(data: dict) -> list[Chart]:
    charts = [quant_perplexity(data)]
    sensitivity = data.get("sensitivity")
    if isinstance(sensitivity, dict):
        for chart in block_tables({"sensitivity": sensitivity}, limit=1):
            chart.id, chart.replaces = "quant-sensitivity", ("sensitivity.png",)
            charts.append(chart)
    return charts
