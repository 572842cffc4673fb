"""Rewrite massive activations (zero / mean / random control) and measure perplexity."""

from massact.interventions.hooks import MODES, SiteMeans, SiteSpec, TokenKinds, intervene
from massact.interventions.perplexity import PerplexityResult, evaluate_perplexity

__all__ = ["MODES", "PerplexityResult", "SiteMeans", "SiteSpec", "TokenKinds", "evaluate_perplexity", "intervene"]
