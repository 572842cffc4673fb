"""The residual stream as an exact rewrite sees it, below every analysis that suggests or makes one.

- `layout`: which weights start, write, read and normalise the residual stream (`find_layout`, one forward);
- `support`: which rewrites (`rescale`, `smooth`, `rotate`, `check_quant`) `massact rewrite` accepts for a
  model, and why not (`refusals`), found the way the rewrite finds them;
- `transform` and `plan`: the exact edits themselves (rescale, smooth, rotate), planned, then applied in place
  or saved; quant's simulated `rotate` and the rewrite both run them;
- `suggest`: the `massact rewrite` line that answers what an analysis found (quant, atlas, the rewrite's own
  report).

Analyses import this package; the rewrite builds on it (`massact.rewrite`), so nothing here imports an
analysis. This module itself imports no torch: the command's option checks read `CHECK_QUANT_BLOCKS`.
"""

TOLERANCE = 1e-3  # largest relative change of the float32 logits a rewrite accepts as exact

CHECK_QUANT_BLOCKS = (
    "--check-quant is not available under block execution (--offload blocks): it quantizes whole copies of the "
    "model in memory; run it with --offload none, or leave --check-quant out"
)
