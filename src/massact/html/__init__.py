"""report.html for any result folder: report.md with interactive charts (plotly.js inlined, works offline)."""

from massact.html.charts import Chart
from massact.html.page import REPORT_HTML, render_markdown, write_report_html
from massact.html.views import charts_for

__all__ = ["REPORT_HTML", "Chart", "charts_for", "render_markdown", "write_report_html"]
