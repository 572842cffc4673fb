"""Tokens as the reports show them: display strings, special flags and kinds, one place for every analysis.

- `TokenText`: decoded strings and kinds of a sequence of ids, cached per id (corpus scan, export);
- `TokenKinds`: a kind code per position of a batch of ids, on the device (interventions);
- `TextInput`, `tokenize_prompt`, `ids_input`: one prompt as ids plus a string and a kind per position (scan).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from massact.detect import token_kind
from massact.errors import MassactError
from massact.models.loaded import LoadedModel
from massact.validate import check_context, check_prompt

KINDS = ("first", "delimiter", "special", "other")  # the kinds `TokenKinds` codes, in code order


def special_ids(tokenizer) -> set[int]:
    """The ids of the tokenizer's special tokens (BOS, EOS, ...); empty without a tokenizer."""
    return set(getattr(tokenizer, "all_special_ids", []) or [])


class TokenText:
    """Decoded token strings and special flags, cached per token id (the ids themselves without a tokenizer)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special = special_ids(tokenizer)
        self._cache: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        if token_id not in self._cache:
            self._cache[token_id] = self.tokenizer.decode([token_id]) if self.tokenizer is not None else str(token_id)
        return self._cache[token_id]

    def kinds_and_texts(self, ids: Sequence[int], first: int) -> tuple[list[str], list[str]]:
        """Per position: token text and kind; position `first` is the sequence's first real token."""
        texts = [self.text(i) for i in ids]
        kinds = [token_kind(t, p - first, i in self.special) if p >= first else "padding" for p, (t, i) in
                 enumerate(zip(texts, ids, strict=True))]  # fmt: skip
        return texts, kinds


class TokenKinds:
    """Token kind ('first', 'delimiter', 'special', 'other') of every position of a batch of ids."""

    def __init__(self, table: torch.Tensor | None = None) -> None:
        self.table = table  # [vocab] kind code of a token id at a position > 0

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenKinds:
        if tokenizer is None:
            return cls()
        special = special_ids(tokenizer)
        size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(size)])
        codes = [KINDS.index(token_kind(text, 1, i in special)) for i, text in enumerate(texts)]
        return cls(torch.tensor(codes, dtype=torch.long))

    def codes(
        self, input_ids: torch.Tensor | None, batch: int, tokens: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Kind codes [batch, tokens] on `device`; position 0 (a BOS, when the tokenizer adds one) is 'first'.

        Without ids (or a table) every position after the first is 'other'.
        """
        if input_ids is None or self.table is None or tuple(input_ids.shape) != (batch, tokens):
            codes = torch.full((batch, tokens), KINDS.index("other"), dtype=torch.long, device=device)
        else:
            if self.table.device != torch.device(device):
                self.table = self.table.to(device)
            codes = self.table[input_ids.detach().to(device).clamp(0, self.table.numel() - 1)]
        codes[:, 0] = KINDS.index("first")
        return codes


@dataclass
class TextInput:
    """A tokenized prompt: ids plus one display string and one kind per position."""

    input_ids: torch.Tensor  # [1, tokens]
    tokens: list[str]
    special: list[bool]

    @property
    def kinds(self) -> list[str]:
        return [token_kind(t, i, s) for i, (t, s) in enumerate(zip(self.tokens, self.special))]


def tokenize_prompt(loaded: LoadedModel, prompt: str, add_special_tokens: bool = True) -> TextInput:
    """Tokenize `prompt` for `loaded`, refusing empty or over-long prompts with a clear message."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise MassactError(f"{loaded.name} has no tokenizer, so it takes no text prompt; give it `images` instead")
    check_prompt(prompt)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)["input_ids"]
    if ids.numel() == 0:
        raise MassactError("the prompt tokenizes to zero tokens; give a longer `prompt`")
    return ids_input(loaded, ids)


def ids_input(loaded: LoadedModel, input_ids: torch.Tensor) -> TextInput:
    """Token ids [tokens] or [1, tokens] as a `TextInput` (strings from the tokenizer, else the ids)."""
    ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise MassactError(f"give one non-empty sequence of token ids, not a tensor of shape {tuple(input_ids.shape)}")
    check_context("the prompt", ids.shape[1], loaded.context_length, "shorten the prompt")
    texts = TokenText(loaded.tokenizer)
    id_list = ids[0].tolist()
    special = [i in texts.special for i in id_list]
    return TextInput(input_ids=ids, tokens=[texts.text(i) for i in id_list], special=special)
