"""Tiny random transformers with a massive activation planted where the test decides.

The plant works through the model's own weights, the way real massive activations
arise: a carrier dim `e` is set on one input token only and kept out of every other
token (its rows in all residual writers before the plant are zeroed); in block `L`
one MLP unit reads that carrier and its down-projection entry `W[d, j]` writes a huge
value into dim `d` of that token alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import PreTrainedTokenizerFast
from transformers.pytorch_utils import Conv1D

from massact.models.structure import find_structure

H = 32
VOCAB = 64
MARK = 7  # the input token id that carries the plant


def tiny_model(family: str) -> nn.Module:
    """A 4-block random model of `family` with hidden size 32, seeded."""
    import transformers as tf

    torch.manual_seed(0)
    common = {"vocab_size": VOCAB}
    if family == "llama":
        config = tf.LlamaConfig(
            hidden_size=H,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
        model = tf.LlamaForCausalLM(config)
    elif family == "gpt2":
        config = tf.GPT2Config(n_embd=H, n_layer=4, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0, **common)
        model = tf.GPT2LMHeadModel(config)
    elif family == "opt":
        config = tf.OPTConfig(
            hidden_size=H,
            ffn_dim=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            word_embed_proj_dim=H,
            max_position_embeddings=128,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
            **common,
        )
        model = tf.OPTForCausalLM(config)
    elif family == "gemma":
        config = tf.GemmaConfig(
            hidden_size=H,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=128,
            **common,
        )
        model = tf.GemmaForCausalLM(config)
    elif family == "qwen2":
        config = tf.Qwen2Config(
            hidden_size=H,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
        model = tf.Qwen2ForCausalLM(config)
    elif family == "gemma3":  # sandwich norms, (1 + w) gains, embed_scale, tied embeddings, q/k norms
        config = tf.Gemma3TextConfig(
            hidden_size=H,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=128,
            sliding_window=16,
            **common,
        )
        model = tf.Gemma3ForCausalLM(config)
    else:
        raise ValueError(family)
    return model.eval()


def _linears(module: nn.Module):
    """(module, in_features, out_features) for every Linear / Conv1D inside `module`."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            yield sub, sub.in_features, sub.out_features
        elif isinstance(sub, Conv1D):
            yield sub, sub.weight.shape[0], sub.nf


def _weight_rows(linear: nn.Module) -> torch.Tensor:
    """The weight as [out, in] (a view: Conv1D stores [in, out])."""
    return linear.weight.T if isinstance(linear, Conv1D) else linear.weight


@dataclass
class Plant:
    block: int
    token: int
    dim: int


@torch.no_grad()
def plant_massive(model: nn.Module, block: int, token: int, dim: int, carrier: int = 3, gain: float = 400.0) -> Plant:
    """Make block `block` write a massive value into `dim` of the input token at position `token` (id MARK)."""
    structure = find_structure(model)
    embed = model.get_input_embeddings()
    embed.weight[:, carrier] = 0.0
    embed.weight[MARK, carrier] = 1.0
    for module in model.modules():  # learned position embeddings must not carry the carrier dim either
        if isinstance(module, nn.Embedding) and module is not embed and module.embedding_dim == H:
            module.weight[:, carrier] = 0.0
    for index in range(block + 1):
        for linear, _, out in _linears(structure.blocks[index]):
            if out == H:
                _weight_rows(linear)[carrier] = 0.0
                if linear.bias is not None:
                    linear.bias[carrier] = 0.0
    attn = structure.attn(block)
    attn_params = {id(p) for p in attn.parameters()} if attn is not None else set()
    mlp_linears = [(lin, i, o) for lin, i, o in _linears(structure.blocks[block]) if id(lin.weight) not in attn_params]
    ups = [lin for lin, i, o in mlp_linears if i == H and o != H]
    down = next(lin for lin, i, o in mlp_linears if o == H and i != H)
    unit = 5
    for up in ups:
        rows = _weight_rows(up)
        rows[unit] = 0.0
        rows[unit, carrier] = 8.0
        if up.bias is not None:
            up.bias[unit] = -16.0  # silences the unit on tokens where the carrier is only normalisation noise
    down_rows = _weight_rows(down)
    down_rows[:, unit] = 0.0
    down_rows[dim, unit] = gain
    return Plant(block=block, token=token, dim=dim)


@torch.no_grad()
def plant_sandwich(model: nn.Module, block: int, token: int, dim: int, gain: float) -> Plant:
    """Gemma 2/3: the post-norm after block `block`'s MLP normalises the planted write away, so its gain
    (`1 + w`) on `dim` is what makes the value massive, as in the real models."""
    plant = plant_massive(model, block, token, dim)
    find_structure(model).blocks[block].post_feedforward_layernorm.weight[dim] = gain - 1.0
    return plant


def marked_input(length: int, token: int, seed: int = 1) -> torch.Tensor:
    """Random ids in [10, VOCAB) with MARK at position `token`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (1, length), generator=generator)
    ids[0, token] = MARK
    return ids


def word_tokenizer(word: Callable[[int], str], bos: bool, unk: int = 1, eos: int = 2) -> PreTrainedTokenizerFast:
    """A real fast tokenizer with one token per space-separated word, id i being `word(i)` for i < VOCAB.

    With `bos`, every plain text starts with MARK's word (the planted token), the way LLaMA's and Gemma's
    tokenizers start it with their BOS; without, the tokenizer adds nothing (as GPT-2's).
    """
    backend = Tokenizer(models.WordLevel({word(i): i for i in range(VOCAB)}, unk_token=word(unk)))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"unk_token": word(unk), "eos_token": word(eos)}
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{word(MARK)} $A", special_tokens=[(word(MARK), MARK)]
        )
        special["bos_token"] = word(MARK)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)
