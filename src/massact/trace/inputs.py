"""`TraceInputs`: the prompt whose massive sites are traced, and the corpus texts of the checking windows."""

from __future__ import annotations

from dataclasses import dataclass

from massact.data.corpus import load_texts
from massact.trace.config import TraceConfig


@dataclass(frozen=True)
class TraceInputs:
    """The prompt, and the corpus documents for the perplexity / risk windows (read from `config.corpus` when None)."""

    prompt: str  # the text whose massive activations are traced
    texts: list[str] | None = None  # the corpus documents; None: read from `config.corpus` when needed

    @classmethod
    def read(cls, prompt: str, config: TraceConfig) -> TraceInputs:
        """Read the corpus now, when `config` needs windows, so that a bad corpus fails before a model loads."""
        return cls(prompt, load_texts(config.corpus) if config.verify or config.risk else None)
