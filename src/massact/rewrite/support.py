"""Which rewrites `massact rewrite` accepts for a model, found the way the rewrite finds them, nothing rewritten.

`refusals(loaded, ids)` maps the model's residual stream (`find_layout`, one forward on `ids`) and answers,
for each of `rescale`, `smooth`, `rotate` and `check_quant`, None when the rewrite accepts it, or the one
line the rewrite would refuse it with. Analyses that suggest a rewrite (atlas) suggest only accepted ones.
"""

from __future__ import annotations

import torch

from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.rewrite.config import CHECK_QUANT_BLOCKS
from massact.rewrite.layout import check_known, find_layout
from massact.rewrite.transform import rescale_refusal, rotate_refusal, smooth_refusal

REWRITES = ("rescale", "smooth", "rotate")
PROBE_TOKENS = 32  # the rewrite maps the layout on as many tokens of its first calibration window


def refusals(loaded: LoadedModel, ids: torch.Tensor, blocks_path: str | None = None) -> dict[str, str | None]:
    """Per rewrite (and `check_quant`), None when `massact rewrite` accepts it for `loaded`, else why not."""
    check = CHECK_QUANT_BLOCKS if loaded.offload is not None else None
    layout = find_layout(loaded.model, ids[:1, :PROBE_TOKENS], blocks_path)
    try:
        check_known(layout, "rewrite")
    except MassactError as err:
        return dict.fromkeys(REWRITES, str(err)) | {"check_quant": check}
    return {
        "rescale": rescale_refusal(layout, loaded.model.config),
        "smooth": smooth_refusal(layout),
        "rotate": rotate_refusal(layout),
        "check_quant": check,
    }
