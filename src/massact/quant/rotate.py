"""quant's `rotate`: the rotation `massact rewrite --rotate` folds into the residual stream, planned for a simulation.

`rotation_plan(loaded, ids, seed)` maps the residual stream as the rewrite does (`find_layout`, one forward on
`ids`, the first tokens of the first calibration window) and plans the rewrite's own `transform.rotate` with the
rewrite's matrix (`massact.rotations`, same seed): every norm's gain folded into the Linears that read it; the
embeddings, every reader (q/k/v, gate/up, routers) on its input side, every writer (o_proj, down_proj) on its
output side and the LM head rotated. Nothing else is rotated: o_proj and down_proj read what they read before.
`quant.simulate` runs the model with the plan active and each Linear's rounding applied after it, so every
quantized Linear sees exactly the activations it sees in the rewritten model. A model the rewrite refuses
(LayerNorm, sandwich norms, ...) is refused with the rewrite's own line, and one whose logits the plan changes
(`inexact`, the check the rewrite makes before it writes) with that: `quant.run` checks both first.
"""

from __future__ import annotations

import torch

from massact.capture.forward import run_forward
from massact.errors import MassactError
from massact.models.loading import LoadedModel
from massact.residual import transform
from massact.residual.layout import check_known, find_layout
from massact.residual.plan import TOLERANCE, Plan, logits_change
from massact.residual.support import PROBE_TOKENS
from massact.rotations import rotation


def rotation_plan(loaded: LoadedModel, ids: torch.Tensor, seed: int = 0, blocks_path: str | None = None) -> Plan:
    """The rewrite's `--rotate` of `loaded.model` with `seed`, planned: nothing changes until `Plan.active`."""
    layout = find_layout(loaded.model, ids[:1, :PROBE_TOKENS], blocks_path)
    check_known(layout, "rewrite")
    plan = Plan(loaded.model)
    transform.rotate(plan, layout, rotation(layout.hidden, seed)[0])
    return plan


def inexact(loaded: LoadedModel, ids: torch.Tensor, seed: int = 0, blocks_path: str | None = None) -> str | None:
    """Why the planned rotation does not keep `loaded`'s function, as the rewrite checks it before writing: the
    logits of the probe's tokens move by more than the rewrite's tolerance of their largest value; None when they
    do not. Checked on a float32 model only, the dtype the rewrite takes (in bfloat16 a rotation that spreads a
    massive value over every channel changes the logits by itself)."""
    if loaded.dtype != torch.float32:
        return None
    plan = rotation_plan(loaded, ids, seed, blocks_path)
    probe = ids[:1, :PROBE_TOKENS]
    before = run_forward(loaded.model, probe).logits.float()
    with plan.active():
        after = run_forward(loaded.model, probe).logits.float()
    change = logits_change(before, after)["max_rel_diff"]
    if change <= TOLERANCE:
        return None
    return (
        f"--rotate is not exact on this model: it moves the logits of {probe.shape[1]} probe tokens by {change:.2e} of "
        f"their largest value (over {TOLERANCE:g}), so the rewrite would not write it"
    )


def refused(strategy: str, reason: str) -> MassactError:
    """The error for a strategy with `rotate` on a model the rewrite does not rotate."""
    return MassactError(
        f"strategy {strategy}: quant's rotate is the rotation `massact rewrite --rotate` folds, and the rewrite "
        f"refuses this model ({reason}); leave rotate out (`best` skips it)"
    )
