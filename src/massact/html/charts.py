"""Interactive charts as plotly figure specs (plain dicts that plotly.js draws), and the text they show on hover."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field


@dataclass
class Chart:
    """One interactive figure; `replaces` names the static images of report.md it stands in for."""

    id: str
    title: str
    data: list[dict]
    layout: dict = field(default_factory=dict)
    replaces: tuple[str, ...] = ()
    note: str = ""  # a line of text shown under the chart
    after: str | None = None  # placed right below the chart with this id

    def spec(self) -> dict:
        layout = {
            "title": {"text": html.escape(self.title)},
            "hovermode": "closest",
            "margin": {"t": 70, "l": 70, "r": 20, "b": 60},
            "height": 460,
            **self.layout,
        }
        return {"data": self.data, "layout": layout}


def number_text(value) -> str:
    """A number exactly as massact's JSON writes it (shortest round-trip repr; inf/NaN as words)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return json.dumps(value)


def label_text(text: str) -> str:
    """User text (a token, a model name) made safe for a hover label: escapes visible, markup escaped."""
    return html.escape(repr(str(text))[1:-1], quote=False)


INDEX_KEYS = ("block", "index")


def token_label(tokens: list[str], position) -> str:
    """'position text' of a token for a hover label (the position alone when it is out of range)."""
    if isinstance(position, int) and 0 <= position < len(tokens):
        return f"{position} {label_text(tokens[position])}"
    return str(position)


def log_axis(title: str) -> dict:
    return {"type": "log", "title": {"text": title}, "exponentformat": "power"}


def finite(value) -> float | None:
    """`value` as a float when it is a finite number (JSON writes inf/NaN as strings), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def picker(labels: list[str], groups: list[list[int]], num_traces: int, active: int = 0) -> dict:
    """A dropdown that shows one group of traces at a time (plotly's own update menu)."""
    buttons = []
    for label, group in zip(labels, groups):
        visible = [i in group for i in range(num_traces)]
        buttons.append({"label": html.escape(label), "method": "update", "args": [{"visible": visible}]})
    return {
        "buttons": buttons,
        "active": active,
        "direction": "down",
        "showactive": True,
        "x": 0.0,
        "xanchor": "left",
        "y": 1.0,
        "yanchor": "bottom",
        "pad": {"b": 8},
    }


def measure_picker_chart(
    chart_id: str,
    title: str,
    x: list,
    series: dict[str, list],
    xlabel: str,
    hover_x: str,
    replaces: tuple[str, ...] = (),
) -> Chart | None:
    """One line per named measure over `x`, a dropdown to pick the measure; hover shows x and the exact value."""
    names = [name for name, ys in series.items() if any(finite(v) is not None for v in ys)]
    if not names:
        return None
    traces = []
    for index, name in enumerate(names):
        ys = series[name]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": html.escape(name),
                "x": x,
                "y": [finite(v) for v in ys],
                "customdata": [[number_text(xv), number_text(v)] for xv, v in zip(x, ys)],
                "hovertemplate": f"{hover_x} %{{customdata[0]}}<br>{html.escape(name)} %{{customdata[1]}}"
                "<extra></extra>",
                "visible": index == 0,
            }
        )
    layout = {
        "xaxis": {"title": {"text": xlabel}},
        "updatemenus": [picker(names, [[i] for i in range(len(names))], len(names))] if len(names) > 1 else [],
        "showlegend": False,
    }
    return Chart(chart_id, title, traces, layout, replaces)
