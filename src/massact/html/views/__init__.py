"""Which interactive charts a result gets: the view its JSON's `kind` names (and kept tensors, when it has them)."""

from __future__ import annotations

from collections.abc import Callable

from massact.html.charts import Chart
from massact.html.views.atlas import atlas_charts, is_atlas
from massact.html.views.attention import attention_charts, is_attention
from massact.html.views.quant import is_quant, quant_charts
from massact.html.views.scan import is_scan, scan_charts
from massact.html.views.tables import block_tables, series_groups, site_trajectories


def generic_charts(data: dict, result=None) -> list[Chart]:
    """Any result: its site trajectories, series and per-block tables."""
    return site_trajectories(data) + series_groups(data) + block_tables(data)


VIEWS: dict[str, Callable[..., list[Chart]]] = {
    "scan": scan_charts,
    "image-scan": scan_charts,
    "attention": attention_charts,
    "atlas": lambda data, result=None: atlas_charts(data),
    "quant": lambda data, result=None: quant_charts(data),
}


def _kind_of_older_json(data: dict) -> str | None:
    """The kind of a JSON written before results carried `kind`, read from the fields it holds."""
    for kind, matches in (("scan", is_scan), ("attention", is_attention), ("atlas", is_atlas), ("quant", is_quant)):
        if matches(data):
            return kind
    return None


def charts_for(data: dict, result=None) -> list[Chart]:
    """The charts of this result's view: the one its `kind` names, else the generic tables."""
    kind = data.get("kind") if "kind" in data else _kind_of_older_json(data)
    return VIEWS.get(kind, generic_charts)(data, result)


__all__ = ["VIEWS", "charts_for"]
