"""report.html: report.md rendered to HTML, its figures made interactive, everything inlined for offline use."""

from __future__ import annotations

import base64
import html
import json
import math
import mimetypes
from functools import cache
from pathlib import Path

from markdown_it import MarkdownIt

from massact.html.charts import Chart
from massact.html.registry import json_names
from massact.html.views import charts_for

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
IMAGE_TYPES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; line-height: 1.5; }
table { border-collapse: collapse; margin: 1em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; }
td { font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) { background: #f6f8fa; }
code { background: #eff1f3; padding: 0 3px; border-radius: 3px; }
img { max-width: 100%; }
.chart { width: 100%; min-height: 460px; margin: 1em 0 2em 0; }
.note { color: #59636e; font-size: 0.9em; }
"""


@cache
def plotly_js() -> str:
    """plotly.js as shipped inside the plotly Python package (no network)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _gaps(value):
    """inf/NaN (a float16 overflow) as null, which plotly draws as a gap."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _gaps(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_gaps(v) for v in value]
    return value


def _json_for_script(data) -> str:
    """JSON that is safe inside a <script> element (no `</script>` or `<!--` can end it); inf/NaN become null."""
    text = json.dumps(_gaps(data), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _image_html(folder: Path, src: str, alt: str) -> str:
    """A figure of the folder embedded as a data: URI; a link when it is not a local image."""
    path = (folder / src).resolve()
    inside = folder.resolve() in path.parents
    if inside and path.is_file() and path.suffix.lower() in IMAGE_TYPES:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix.lower() == ".svg":
            mime = "image/svg+xml"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'
    return f'<a href="{html.escape(src)}">{html.escape(alt or src)}</a>'


def _chart_div(chart: Chart, charts: list[Chart] = ()) -> str:
    """The chart's element, followed by the charts placed after it."""
    note = f'<p class="note">{html.escape(chart.note)}</p>' if chart.note else ""
    own = f'<div class="chart" id="{html.escape(chart.id)}"></div>{note}'
    return own + "".join(_chart_div(c, charts) for c in charts if c.after == chart.id)


def _following(chart: Chart, charts: list[Chart]) -> set[str]:
    """The ids of `chart` and of every chart placed below it."""
    ids = {chart.id}
    for other in charts:
        if other.after == chart.id:
            ids |= _following(other, charts)
    return ids


def render_markdown(text: str, folder: Path, charts: list[Chart]) -> tuple[str, list[Chart]]:
    """report.md as HTML: an image a chart replaces becomes that chart; other images are embedded.

    Returns the HTML and the charts that no image called for (placed by the caller).
    """
    by_image = {name: chart for chart in charts for name in chart.replaces}
    placed: set[str] = set()
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])

    def image(self, tokens, idx, options, env) -> str:
        token = tokens[idx]
        src = str(token.attrs.get("src", ""))
        alt = self.renderInlineAsText(token.children or [], options, env)
        chart = by_image.get(Path(src).name)
        if chart is not None and chart.id not in placed:
            placed.update(_following(chart, charts))
            return _chart_div(chart, charts)
        return _image_html(folder, src, alt)

    md.add_render_rule("image", image)
    body = md.render(text)
    return body, [c for c in charts if c.id not in placed and (c.after is None or c.after not in placed)]


def _insert_after_heading(body: str, extra: str) -> str:
    """`extra` after the first top-level heading's block of text (before the first h2), else at the top."""
    marker = body.find("<h2")
    return body[:marker] + extra + body[marker:] if marker >= 0 else body + extra


def render_page(title: str, body: str, charts: list[Chart], script: str) -> str:
    """The whole page: styles, the report body and, when there are charts, plotly.js (`script`) and their specs."""
    head = f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
    if not charts:
        return f"{head}<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    specs = {chart.id: chart.spec() for chart in charts}
    draw = (
        "const specs = JSON.parse(document.getElementById('massact-charts').textContent);\n"
        "for (const [id, spec] of Object.entries(specs)) {\n"
        "  Plotly.newPlot(id, spec.data, spec.layout, {responsive: true, displaylogo: false});\n"
        "}\n"
    )
    return (
        f"{head}<style>{STYLE}</style>\n<script>{script}</script>\n</head>\n<body>\n{body}\n"
        f'<script type="application/json" id="massact-charts">{_json_for_script(specs)}</script>\n'
        f"<script>\n{draw}</script>\n</body>\n</html>\n"
    )


def _result_json(folder: Path, result) -> dict:
    """The result's JSON; without a result, the folder's one JSON file (or its main one, e.g. corpus.json)."""
    if result is not None and hasattr(result, "to_json"):
        return result.to_json()
    candidates = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    names = json_names()  # the main JSON of each registered kind
    known = [p for p in candidates if p.name in names]
    chosen = candidates if len(candidates) == 1 else sorted(known, key=lambda p: names.index(p.name))
    return json.loads(chosen[0].read_text(encoding="utf-8")) if chosen else {}


def _report_markdown(folder: Path) -> str | None:
    """report.md, else the folder's only Markdown file (atlas.md), else None."""
    report = folder / REPORT_MD
    if not report.is_file():
        others = sorted(folder.glob("*.md"))
        report = others[0] if len(others) == 1 else report
    return report.read_text(encoding="utf-8") if report.is_file() else None


def write_report_html(folder: Path, result=None) -> Path:
    """Write `folder`/report.html from `folder`/report.md and the result's JSON (any result).

    The charts are chosen from what the JSON holds (scan, attention, strategies, model comparison, any
    per-block table). Images of report.md with no chart are embedded, so the page is one self-contained
    file that works offline.
    """
    folder = Path(folder)
    data = _result_json(folder, result)
    text = _report_markdown(folder) or f"# {data.get('model', 'massact')}\n"
    try:
        script = plotly_js()
        charts = charts_for(data, result)
    except ImportError:  # without plotly the page keeps the static figures
        script, charts = "", []
    body, unplaced = render_markdown(text, folder, charts)
    if unplaced:
        ids = {c.id for c in charts}
        tops = [c for c in unplaced if c.after not in ids]
        body = _insert_after_heading(body, "".join(_chart_div(c, charts) for c in tops))
    first_line = text.strip().splitlines()[0] if text.strip() else "massact report"
    page = render_page(first_line.lstrip("# ").strip() or "massact report", body, charts, script)
    path = folder / REPORT_HTML
    path.write_text(page, encoding="utf-8")
    return path
