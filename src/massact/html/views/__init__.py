"""Which interactive charts a result gets, chosen from what its JSON holds (and kept tensors, when it has them)."""

from __future__ import annotations

from massact.html.charts import Chart
from massact.html.views.atlas import atlas_charts, is_atlas
from massact.html.views.attention import attention_charts, is_attention
from massact.html.views.quant import is_quant, quant_charts
from massact.html.views.scan import is_scan, scan_charts
from massact.html.views.tables import block_tables, series_groups, site_trajectories


def charts_for(data: dict, result=None) -> list[Chart]:
    """The charts that fit this result, chosen from what its JSON holds."""
    if is_scan(data):
        return scan_charts(data, result)
    if is_attention(data):
        return attention_charts(data, result)
    if is_atlas(data):
        return atlas_charts(data)
    if is_quant(data):
        return quant_charts(data)
    return site_trajectories(data) + series_groups(data) + block_tables(data)


__all__ = ["charts_for"]
