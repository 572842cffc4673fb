"""What the attention analysis reads: token ids with their display strings and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from massact.data.corpus import load_texts, prefix_tokens, token_windows
from massact.defaults import PAPER_PROMPT as PAPER_PROMPT
from massact.models.loading import LoadedModel
from massact.tokens import tokenize_prompt
from massact.validate import check_context


@dataclass
class AttentionInput:
    """Sequences [sequences, tokens], the first one's token strings, their source and the window prefix."""

    input_ids: torch.Tensor
    tokens: list[str]
    source: dict = field(default_factory=dict)
    prefix_tokens: list[str] | None = None  # corpus windows: what each window starts with ([] when nothing)


def prompt_input(loaded: LoadedModel, text: str, add_special_tokens: bool = True) -> AttentionInput:
    """One prompt, tokenized the way `scan` tokenizes it."""
    encoded = tokenize_prompt(loaded, text, add_special_tokens=add_special_tokens)
    source = {"prompt": text, "add_special_tokens": add_special_tokens}
    return AttentionInput(encoded.input_ids, encoded.tokens, source)


def corpus_input(
    loaded: LoadedModel,
    corpus: str,
    samples: int,
    seq_len: int,
    seed: int = 0,
    add_special_tokens: bool = True,
    texts: list[str] | None = None,
) -> AttentionInput:
    """`samples` corpus windows of `seq_len` tokens, each starting the way the tokenizer starts a text.

    `texts` are the corpus's documents when already read (`load_texts(corpus)`), else they are read here.
    """
    check_context("seq_len", seq_len, loaded.context_length)
    tokenizer = loaded.tokenizer
    texts = load_texts(corpus) if texts is None else texts
    ids = token_windows(tokenizer, texts, samples, seq_len, seed, add_special_tokens=add_special_tokens)
    strings = [tokenizer.decode([i]) for i in ids[0].tolist()]
    prefix = prefix_tokens(tokenizer, add_special_tokens)
    source = {"corpus": corpus, "samples": samples, "seq_len": seq_len, "seed": seed}
    return AttentionInput(ids, strings, source, prefix)
