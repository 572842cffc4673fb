"""Scan charts: per-block top activations, one block's tokens x dims, kept block outputs."""

from __future__ import annotations

from massact.html.charts import Chart, finite, log_axis, number_text, picker, token_label

MAX_SURFACE_TOKENS = 64


def is_scan(data: dict) -> bool:
    blocks = data.get("blocks")
    return bool(blocks) and isinstance(blocks[0], dict) and "top" in blocks[0] and "median" in blocks[0]


def scan_layerwise(data: dict) -> Chart:
    """Top-1/2/3 magnitudes and the median per block; hover: block, token text, dim and the signed value."""
    tokens = data.get("tokens") or []
    blocks = data["blocks"]
    xs = [b["index"] for b in blocks]
    traces = []
    hover = "block %{customdata[0]}<br>token %{customdata[1]}<br>dim %{customdata[2]}<br>value %{customdata[3]}"
    for rank in (1, 2, 3):
        entries = [b["top"][rank - 1] if len(b["top"]) >= rank else None for b in blocks]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"top {rank}",
                "x": xs,
                "y": [finite(e["magnitude"]) if e else None for e in entries],
                "customdata": [
                    [x, token_label(tokens, e["token"]), e["dim"], number_text(e["value"])] if e else [x, "-", "-", "-"]
                    for x, e in zip(xs, entries)
                ],
                "hovertemplate": hover + f"<extra>top {rank}</extra>",
            }
        )
    traces.append(
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "median",
            "x": xs,
            "y": [finite(b["median"]) for b in blocks],
            "customdata": [[x, number_text(b["median"])] for x, b in zip(xs, blocks)],
            "hovertemplate": "block %{customdata[0]}<br>median |x| %{customdata[1]}<extra>median</extra>",
        }
    )
    layout = {"xaxis": {"title": {"text": "block"}, "dtick": 1}, "yaxis": log_axis("|activation|")}
    title = f"{data.get('model', 'model')}: largest activations per block"
    return Chart("scan-layerwise", title, traces, layout, replaces=("layerwise.png",))


def _default_block(data: dict) -> int:
    first = (data.get("summary") or {}).get("first_block")
    if isinstance(first, int):
        return first
    ratios = [finite(b.get("top1_ratio")) or 0.0 for b in data["blocks"]]
    return max(range(len(ratios)), key=ratios.__getitem__) if ratios else 0


def scan_top_sites(data: dict) -> Chart:
    """The largest activations of one block on the tokens x dims plane, with a block picker."""
    tokens = data.get("tokens") or []
    blocks = data["blocks"]
    peak = max((finite(e["magnitude"]) or 0.0 for b in blocks for e in b["top"]), default=1.0) or 1.0
    traces = []
    for b in blocks:
        top = b["top"]
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"block {b['index']}",
                "x": [e["dim"] for e in top],
                "y": [e["token"] for e in top],
                "marker": {
                    "size": [6 + 30 * ((finite(e["magnitude"]) or 0.0) / peak) ** 0.5 for e in top],
                    "color": [finite(e["magnitude"]) for e in top],
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {"title": {"text": "|x|"}},
                },
                "customdata": [
                    [b["index"], token_label(tokens, e["token"]), e["dim"], number_text(e["value"])] for e in top
                ],
                "hovertemplate": "block %{customdata[0]}<br>token %{customdata[1]}<br>dim %{customdata[2]}"
                "<br>value %{customdata[3]}<extra></extra>",
                "visible": False,
            }
        )
    active = _default_block(data)
    traces[active]["visible"] = True
    labels = [f"block {b['index']}" for b in blocks]
    hidden = data.get("hidden_size")
    layout = {
        "xaxis": {"title": {"text": "dim"}, "range": [-0.5, hidden - 0.5] if isinstance(hidden, int) else None},
        "yaxis": {
            "title": {"text": "token"},
            "range": [len(tokens) - 0.5, -0.5],
            "tickvals": list(range(len(tokens))),
            "ticktext": [token_label(tokens, i) for i in range(len(tokens))],
        },
        "updatemenus": [picker(labels, [[i] for i in range(len(blocks))], len(blocks), active)],
        "showlegend": False,
    }
    title = "largest activations of the chosen block, tokens x dims"
    note = "The largest activations of each block kept in scan.json (scan --top-k); pick the block above the chart."
    return Chart("scan-top-sites", title, traces, layout, note=note, after="scan-layerwise")


def kept_surfaces(kept: dict, tokens: list[str], chart_id: str, replaces: tuple[str, ...]) -> Chart | None:
    """|activation| over tokens x dims of each kept block output, one block at a time (block picker)."""
    if not kept:
        return None
    order = sorted(kept)
    traces = []
    for block in order:
        hidden = kept[block].detach().float().cpu()
        hidden = hidden.reshape(-1, hidden.shape[-1])[:MAX_SURFACE_TOKENS]
        values = hidden.tolist()
        rows = [token_label(tokens, i) for i in range(hidden.shape[0])]
        traces.append(
            {
                "type": "heatmap",
                "name": f"block {block}",
                "z": hidden.abs().tolist(),
                "x": list(range(hidden.shape[1])),
                "y": rows,
                "text": [[f"{v:.6g}" for v in row] for row in values],
                "colorscale": "Viridis",
                "colorbar": {"title": {"text": "|x|"}},
                "hovertemplate": f"block {block}<br>token %{{y}}<br>dim %{{x}}<br>value %{{text}}<extra></extra>",
                "visible": block == order[0],
            }
        )
    layout = {
        "xaxis": {"title": {"text": "dim"}},
        "yaxis": {"title": {"text": "token"}, "autorange": "reversed", "type": "category"},
        "updatemenus": [picker([f"block {b}" for b in order], [[i] for i in range(len(order))], len(order))]
        if len(order) > 1
        else [],
    }
    title = "|activation| over tokens x dims of the chosen block output"
    return Chart(chart_id, title, traces, layout, replaces)


def scan_charts(data: dict, result) -> list[Chart]:
    charts = [scan_layerwise(data), scan_top_sites(data)]
    kept = getattr(result, "kept", None) or {}
    surface = kept_surfaces(kept, data.get("tokens") or [], "scan-surface", ("activations_3d.png",))
    return charts + ([surface] if surface else [])
