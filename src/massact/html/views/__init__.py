"""Which interactive charts a result gets: the view its kind registered (`massact.html.registry`), else tables."""

from __future__ import annotations

from massact.html.charts import Chart
from massact.html.registry import registered
from massact.html.views.atlas import is_atlas
from massact.html.views.attention import is_attention
from massact.html.views.quant import is_quant
from massact.html.views.scan import is_scan
from massact.html.views.tables import block_tables, series_groups, site_trajectories


def generic_charts(data: dict, result=None) -> list[Chart]:
    """Any result: its site trajectories, series and per-block tables."""
    return site_trajectories(data) + series_groups(data) + block_tables(data)


def _kind_of_older_json(data: dict) -> str | None:
    """The kind of a JSON written before results carried `kind`, read from the fields it holds."""
    for kind, matches in (("scan", is_scan), ("attention", is_attention), ("atlas", is_atlas), ("quant", is_quant)):
        if matches(data):
            return kind
    return None


def charts_for(data: dict, result=None) -> list[Chart]:
    """The charts of this result's view: the one its kind registered, else the generic tables."""
    kind = data.get("kind") if "kind" in data else getattr(result, "result_kind", None) or _kind_of_older_json(data)
    found = registered(kind)
    view = found.view if found is not None and found.view is not None else generic_charts
    return view(data, result)


__all__ = ["charts_for", "generic_charts"]
