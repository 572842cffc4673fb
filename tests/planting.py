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
    if family in SINK_AND_LINEAR:  # GPT-OSS, Qwen3-Next: built at the end of this file
        return SINK_AND_LINEAR[family]().eval()
    common = {"vocab_size": VOCAB}
    decoder = {  # the LLaMA-style families: hidden size H, 4 blocks of 4 heads, a gated MLP of 64
        "hidden_size": H,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        **common,
    }
    gemma = {"num_key_value_heads": 1, "head_dim": 8}
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=2, **decoder))
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
        model = tf.GemmaForCausalLM(tf.GemmaConfig(**gemma, **decoder))
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(num_key_value_heads=2, **decoder))
    elif family == "gemma3":  # sandwich norms, (1 + w) gains, embed_scale, tied embeddings, q/k norms
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(sliding_window=16, **gemma, **decoder))
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
    dim: int


@torch.no_grad()
def plant_massive(model: nn.Module, block: int, dim: int, carrier: int = 3, gain: float = 400.0) -> Plant:
    """Make block `block` write a massive value into `dim` of every input token whose id is MARK.

    Where it lands is where the input holds MARK (`marked_input` puts it at a chosen position).
    """
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
    return Plant(block=block, dim=dim)


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


# --- Gemma-3 family: sandwich norms with (1 + w) gains, and a massive value that float16 cannot hold ---

FP16_MAX = 65504.0


def tiny_gemma3() -> nn.Module:
    """`tiny_model("gemma3")`: its blocks norm each sub-layer's output before adding it (`post_attention_layernorm`,
    `post_feedforward_layernorm`, gains `1 + w`), and its embeddings are scaled by sqrt(32)."""
    return tiny_model("gemma3")


@torch.no_grad()
def plant_sandwich(model: nn.Module, block: int, dim: int, value: float = 1e5) -> Plant:
    """Plant a massive `value` (default 1e5, above float16's 65,504) into `dim` of MARK at block `block`.

    The MLP writes a modest spike into `dim` (and nothing else into it, on any token); the block's
    norm after the MLP turns it into sqrt(H) x (1 + w[dim]), so its gain entry `w[dim]` is the weight
    that makes the value massive: the super weight. Every value before that norm fits float16.
    """
    plant_massive(model, block, dim, gain=8.0)
    layer = find_structure(model).blocks[block]
    down = layer.mlp.down_proj.weight
    unit = 5
    kept = float(down[dim, unit])
    down[dim] = 0.0
    down[dim, unit] = kept
    layer.post_feedforward_layernorm.weight[dim] = value / H**0.5 - 1.0
    return Plant(block=block, dim=dim)


def letter_word(i: int) -> str:
    """Token id i as a word of letters only (some tokenizer classes split digits off): 7 -> "wah"."""
    return "w" + chr(97 + i // 26) + chr(97 + i % 26)


def planted_with_words(family: str):
    """A planted tiny model with a word tokenizer of `letter_word`s: "gemma3" (sandwich plant, with a BOS)
    or any `tiny_model` family (`plant_massive`, no BOS); block 1 writes dim 4 of MARK."""
    from massact.models.loading import LoadedModel

    if family == "gemma3":
        model = tiny_gemma3()
        plant_sandwich(model, block=1, dim=4)
    else:
        model = tiny_model(family)
        plant_massive(model, block=1, dim=4)
    tokenizer = word_tokenizer(letter_word, bos=family == "gemma3")
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"planted-{family}")


# ---- learned attention sinks, gated and linear attention, fused experts: GPT-OSS and Qwen3-Next ----------


def _gpt_oss() -> nn.Module:
    """Learned sink logit per head, sliding and full attention layers, fused experts with biases."""
    import transformers as tf

    config = tf.GptOssConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=16,
        max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return tf.GptOssForCausalLM(config)


def _qwen3_next() -> nn.Module:
    """Gated DeltaNet (linear attention) in blocks 0-2, gated softmax attention in block 3, fused experts."""
    import transformers as tf

    config = tf.Qwen3NextConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=48, moe_intermediate_size=24,
        shared_expert_intermediate_size=24, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, num_experts=4, num_experts_per_tok=2, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=8, linear_value_head_dim=8, max_position_embeddings=128,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return tf.Qwen3NextForCausalLM(config)


SINK_AND_LINEAR: dict[str, Callable[[], nn.Module]] = {"gpt_oss": _gpt_oss, "qwen3_next": _qwen3_next}


def expert_rows(experts: nn.Module, name: str) -> torch.Tensor:
    """A fused expert parameter as [expert, out, in] (a view: `is_transposed` modules store [expert, in, out])."""
    weight = getattr(experts, name)
    return weight.transpose(1, 2) if getattr(experts, "is_transposed", False) else weight


@dataclass
class ExpertPlant:
    block: int
    dim: int
    expert: int
    unit: int


@torch.no_grad()
def plant_expert(
    model: nn.Module, block: int, dim: int, mark: int = MARK, expert: int = 2, unit: int = 5, carrier: int = 3,
    gain: float = 60.0,
) -> ExpertPlant:  # fmt: skip
    """Route token id `mark` in block `block` to expert `expert`, whose single fused down-projection entry
    `[expert, dim, unit]` then writes a massive value into `dim` of that token (the carrier dim, set on
    `mark`'s embedding only and written by nothing else, drives the router and unit `unit`)."""
    structure = find_structure(model)
    embed = model.get_input_embeddings()
    embed.weight[:, carrier] = 0.0
    embed.weight[mark, carrier] = 1.0
    for index in range(block + 1):
        for linear, _, out in _linears(structure.blocks[index]):  # attention, linear attention, shared experts
            if out == H:
                _weight_rows(linear)[carrier] = 0.0
                if linear.bias is not None:
                    linear.bias[carrier] = 0.0
        experts = structure.mlp(index).get_submodule(structure.moe(index).experts)
        expert_rows(experts, "down_proj")[:, carrier, :] = 0.0
        if isinstance(getattr(experts, "down_proj_bias", None), torch.Tensor):
            experts.down_proj_bias[:, carrier] = 0.0
    moe = structure.moe(block)
    mlp = structure.mlp(block)
    router = mlp.get_submodule(moe.router)
    router.weight[:, carrier] = 0.0
    router.weight[expert, carrier] = 4.0
    experts = mlp.get_submodule(moe.experts)
    gate_up = expert_rows(experts, "gate_up_proj")[expert]  # [2 * inter, hidden]
    inter = gate_up.shape[0] // 2
    # gate and up rows: concatenated (gates, then ups) or interleaved (gate, up, gate, up, ...)
    rows = [unit, inter + unit] if getattr(experts, "is_concatenated", True) else [2 * unit, 2 * unit + 1]
    for row in rows:
        gate_up[row] = 0.0
        gate_up[row, carrier] = 2.0
        if isinstance(getattr(experts, "gate_up_proj_bias", None), torch.Tensor):
            experts.gate_up_proj_bias[expert, row] = 0.0
    down = expert_rows(experts, "down_proj")
    down[expert, :, unit] = 0.0
    down[expert, dim, unit] = gain
    return ExpertPlant(block=block, dim=dim, expert=expert, unit=unit)
