"""A tokenized prompt: ids plus one display string and one kind per position."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from massact.defaults import DEFAULT_PROMPT as DEFAULT_PROMPT
from massact.detect import token_kind
from massact.errors import MassactError
from massact.models.loading import LoadedModel


@dataclass
class TextInput:
    """A tokenized prompt: ids plus one display string and one kind per position."""

    input_ids: torch.Tensor  # [1, tokens]
    tokens: list[str]
    special: list[bool]

    @property
    def kinds(self) -> list[str]:
        return [token_kind(t, i, s) for i, (t, s) in enumerate(zip(self.tokens, self.special))]


def _check_length(loaded: LoadedModel, count: int) -> None:
    limit = loaded.context_length
    if limit is not None and count > limit:
        raise MassactError(f"the prompt has {count} tokens but the model takes at most {limit}; shorten the prompt")


def tokenize_prompt(loaded: LoadedModel, prompt: str, add_special_tokens: bool = True) -> TextInput:
    """Tokenize `prompt` for `loaded`, refusing empty or over-long prompts with a clear message."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise MassactError(f"{loaded.name} has no tokenizer, so it takes no text prompt; give it --images instead")
    if not prompt or not prompt.strip():
        raise MassactError("the prompt is empty; give --prompt TEXT (or --text-file PATH) with some text")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)["input_ids"]
    if ids.numel() == 0:
        raise MassactError("the prompt tokenizes to zero tokens; give a longer --prompt")
    _check_length(loaded, ids.shape[1])
    return ids_input(loaded, ids)


def ids_input(loaded: LoadedModel, input_ids: torch.Tensor) -> TextInput:
    """Token ids [tokens] or [1, tokens] as a `TextInput` (strings from the tokenizer, else the ids)."""
    ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise MassactError(f"give one non-empty sequence of token ids, not a tensor of shape {tuple(input_ids.shape)}")
    _check_length(loaded, ids.shape[1])
    tokenizer = loaded.tokenizer
    id_list = ids[0].tolist()
    if tokenizer is None:
        return TextInput(input_ids=ids, tokens=[str(i) for i in id_list], special=[False] * len(id_list))
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    tokens = [tokenizer.decode([i]) for i in id_list]
    return TextInput(input_ids=ids, tokens=tokens, special=[i in special_ids for i in id_list])
