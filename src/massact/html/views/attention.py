"""Attention charts: per-head measures, per-block measures, attention maps with a block / head picker."""

from __future__ import annotations

import html

from massact.html.charts import INDEX_KEYS, Chart, finite, measure_picker_chart, number_text, picker, token_label
from massact.html.views.scan import MAX_SURFACE_TOKENS


def is_attention(data: dict) -> bool:
    blocks = data.get("blocks")
    return "num_heads" in data and bool(blocks) and isinstance(blocks[0], dict) and "per_head" in blocks[0]


def attention_heads(data: dict) -> Chart:
    """Every per-head measure as a blocks x heads heat map, a dropdown picks the measure."""
    blocks = data["blocks"]
    measures = list(blocks[0]["per_head"])
    traces = []
    for index, name in enumerate(measures):
        rows = [b["per_head"].get(name) or [] for b in blocks]
        traces.append(
            {
                "type": "heatmap",
                "name": html.escape(name),
                "z": [[finite(v) for v in row] for row in rows],
                "text": [[number_text(v) for v in row] for row in rows],
                "x": list(range(max(len(r) for r in rows))),
                "y": [b["index"] for b in blocks],
                "colorscale": "Viridis",
                "hovertemplate": f"block %{{y}}<br>head %{{x}}<br>{html.escape(name)} %{{text}}<extra></extra>",
                "visible": index == 0,
            }
        )
    layout = {
        "xaxis": {"title": {"text": "head"}},
        "yaxis": {"title": {"text": "block"}, "autorange": "reversed"},
        "updatemenus": [picker(measures, [[i] for i in range(len(measures))], len(measures))],
    }
    return Chart("attention-heads", "per-head measures, blocks x heads", traces, layout)


def attention_maps(result, tokens: list[str]) -> Chart | None:
    """Attention probabilities of the kept blocks, per head and averaged, with a block/head picker."""
    sequences = getattr(result, "sequences", None)
    if not sequences:
        return None
    first = sequences[0]
    maps: dict[int, object] = dict(getattr(first, "maps", {}) or {})
    panels: list[tuple[str, object]] = []
    for block in sorted(maps):
        probs = maps[block].detach().float().cpu()
        panels.append((f"block {block}, mean over heads", probs.mean(0)))
        panels += [(f"block {block}, head {h}", probs[h]) for h in range(probs.shape[0])]
    heatmap = getattr(first, "heatmap", None)
    if heatmap is not None and getattr(result, "heatmap_block", None) not in maps:
        panels.insert(0, (f"block {result.heatmap_block}, mean over heads", heatmap.detach().float().cpu()))
    if not panels:
        return None
    traces = []
    for index, (label, probs) in enumerate(panels):
        probs = probs[:MAX_SURFACE_TOKENS, :MAX_SURFACE_TOKENS]
        names = [token_label(tokens, i) for i in range(probs.shape[0])]
        traces.append(
            {
                "type": "heatmap",
                "name": html.escape(label),
                "z": probs.tolist(),
                "text": [[f"{v:.4g}" for v in row] for row in probs.tolist()],
                "x": names[: probs.shape[1]],
                "y": names,
                "colorscale": "Blues",
                "zmin": 0,
                "zmax": 1,
                "hovertemplate": f"{html.escape(label)}<br>query %{{y}}<br>key %{{x}}<br>p %{{text}}<extra></extra>",
                "visible": index == 0,
            }
        )
    layout = {
        "xaxis": {"title": {"text": "key"}, "type": "category"},
        "yaxis": {"title": {"text": "query"}, "autorange": "reversed", "type": "category"},
        "height": 600,
        "updatemenus": [picker([p[0] for p in panels], [[i] for i in range(len(panels))], len(panels))]
        if len(panels) > 1
        else [],
    }
    title = "attention probabilities (pick block and head)"
    replaces = (f"attention_block{getattr(result, 'heatmap_block', None)}.png",)
    return Chart("attention-maps", title, traces, layout, replaces)


def attention_charts(data: dict, result) -> list[Chart]:
    charts = [attention_heads(data)]
    blocks = data["blocks"]
    series = {
        key: [b.get(key) for b in blocks]
        for key, value in blocks[0].items()
        if key not in INDEX_KEYS and (value is None or finite(value) is not None)
    }
    layer = measure_picker_chart(
        "attention-blocks", "per-block attention measures", [b["index"] for b in blocks], series, "block", "block"
    )
    maps = attention_maps(result, data.get("tokens") or [])
    return charts + [c for c in (layer, maps) if c]
