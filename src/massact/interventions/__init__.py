"""Rewrite massive activations (zero / mean / random control) and measure perplexity.

    result = massact.interventions.run(loaded, ["shakespeare"], InterventionConfig(samples=16, seq_len=512))
    result.to_json(); result.show(console); result.write(folder)

`mode_context(loaded, structure, sites_or_config, mode, means, blocks)` activates one mode's hooks for
any other evaluator (zero-shot tasks, say) and removes them on exit:

    with mode_context(loaded, None, SiteSpec(), "zero", None, "11"):
        ...  # every forward of loaded.model now has the massive activations of block 11 zeroed

Windows start as the tokenizer starts a text (its BOS, whose token kind is 'first'); perplexity scores
only the text tokens (`evaluate_perplexity(..., prefix_len=...)`).
"""

from massact.defaults import MODES
from massact.interventions.config import InterventionConfig, parse_ints, parse_modes, resolve_blocks
from massact.interventions.hooks import intervene
from massact.interventions.means import SiteMeans, read_means
from massact.interventions.result import InterventionResult
from massact.interventions.run import mode_context, run
from massact.interventions.sites import SiteSpec
from massact.perplexity import PerplexityResult, evaluate_perplexity
from massact.tokens import TokenKinds

__all__ = [
    "MODES",
    "InterventionConfig",
    "InterventionResult",
    "PerplexityResult",
    "SiteMeans",
    "SiteSpec",
    "TokenKinds",
    "evaluate_perplexity",
    "intervene",
    "mode_context",
    "parse_ints",
    "parse_modes",
    "read_means",
    "resolve_blocks",
    "run",
]
