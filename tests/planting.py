"""Tiny random transformers with a massive activation planted where the test decides.

The plant works through the model's own weights, the way real massive activations
arise: a carrier dim `e` is set on one input token only and kept out of every other
token (its rows in all residual writers before the plant are zeroed); in block `L`
one MLP unit reads that carrier and its down-projection entry `W[d, j]` writes a huge
value into dim `d` of that token alone.

Every model, tokenizer, window set and fixture more than one test file uses lives here (test files import
from this module, never from each other), in sections: the tiny families and `plant_massive`; Gemma-3's
sandwich plant; GPT-OSS and Qwen3-Next with `plant_expert`; number-token models with a known super weight;
a planted Mixtral; the models a rewrite folds; quantization's planted models and windows; a saved LLaMA with
its corpus (`tiny_dir`); and reference computations in plain torch (`quantized_by_hand`, `perplexity_by_hand`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


# ---- number-token models with a planted super weight (trace, export, quant risk) ---------------------------
# Text "5 1 2 5 3" is ids [5, 1, 2, 5, 3]. Token PLANT_TOKEN carries dim CARRIER (nothing else writes it); in block
# BLOCK unit CHANNEL of the MLP reads it and the down-projection entry [DIM, CHANNEL] writes a massive value.

PLANT_TOKEN, CARRIER, DIM, CHANNEL, BLOCK = 5, 3, 7, 33, 1
PROMPT = "5 1 2 5 3 4 6"
# Windows of token ids: the planted token sits at position 0 of window 0 and at positions 2 and 5 of window 1.
WINDOWS = torch.tensor([[PLANT_TOKEN, 1, 2, 3, 4, 6, 7, 8], [1, 2, PLANT_TOKEN, 3, 4, PLANT_TOKEN, 6, 7]])


def number_tokenizer(vocab: int = 16, bos: int | None = None) -> PreTrainedTokenizerFast:
    """Text "5 1 2 5 3" -> ids [5, 1, 2, 5, 3] (id `bos` first when given): a real fast tokenizer, built here.

    Id 0 is the unknown token `<unk>`.
    """
    words = {"<unk>": 0, **{str(i): i for i in range(1, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {}
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(str(bos), bos)])
        special = {"bos_token": str(bos)}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)


def _carrier_only_in_embedding(model: nn.Module, column: int) -> None:
    """Dim `column` of the residual holds only the planted token's embedding: nothing else writes it."""
    for name, param in model.named_parameters():
        if "embed" in name or "wte" in name or "wpe" in name:
            param.data[:, column] = 0


def planted_llama():
    """A 4-block LLaMA (vocabulary 16) with the super weight [DIM, CHANNEL] = 40 in block BLOCK's down_proj."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from massact.models.loading import LoadedModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        _carrier_only_in_embedding(model, CARRIER)
        model.model.embed_tokens.weight[PLANT_TOKEN, CARRIER] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[CARRIER] = 0
            layer.mlp.down_proj.weight[CARRIER] = 0
        mlp = model.model.layers[BLOCK].mlp
        mlp.gate_proj.weight[CHANNEL] = 0
        mlp.up_proj.weight[CHANNEL] = 0
        mlp.gate_proj.weight[CHANNEL, CARRIER] = 2.0
        mlp.up_proj.weight[CHANNEL, CARRIER] = 2.0
        mlp.down_proj.weight[DIM, CHANNEL] = 40.0
    return LoadedModel(model=model, tokenizer=number_tokenizer(), name="planted-llama")


def planted_gpt2():
    """A 3-block GPT-2 (vocabulary 16) with the super weight [DIM, CHANNEL] = 400 in block BLOCK's c_proj."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from massact.models.loading import LoadedModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=16, n_embd=32, n_layer=3, n_head=4, n_positions=32)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        _carrier_only_in_embedding(model, CARRIER)
        model.transformer.wte.weight[PLANT_TOKEN, CARRIER] = 1.0
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight[:, CARRIER] = 0  # Conv1D stores [in, out]
                proj.bias[CARRIER] = 0
        mlp = model.transformer.h[BLOCK].mlp
        mlp.c_fc.weight[:, CHANNEL] = 0
        mlp.c_fc.weight[CARRIER, CHANNEL] = 2.0
        mlp.c_fc.bias[CHANNEL] = -4.0
        mlp.c_proj.weight[CHANNEL, DIM] = 400.0
    return LoadedModel(model=model, tokenizer=number_tokenizer(), name="planted-gpt2")


# ---- a Mixtral with a planted expert (MoE commands, rewrite) ------------------------------------------------
# The router of block MOE_BLOCK sends the marked token to expert MOE_EXPERT, whose fused down-projection entry
# [MOE_EXPERT, MOE_DIM, MOE_UNIT] writes MOE_GAIN-scaled massive values into MOE_DIM (`plant_expert`).

MOE_BLOCK, MOE_EXPERT, MOE_UNIT, MOE_DIM, MOE_CARRIER, MOE_GAIN = 1, 2, 5, 11, 3, 60.0
MOE_BOS = 63  # the BOS id of `mixtral()`


def mixtral() -> nn.Module:
    """A 3-block Mixtral of 4 experts (2 per token), hidden size H, BOS id MOE_BOS; not seeded."""
    import transformers as tf

    config = tf.MixtralConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
        bos_token_id=MOE_BOS, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return tf.MixtralForCausalLM(config)


def down_rows(experts: nn.Module) -> torch.Tensor:
    """The fused down-projection as [expert, out, in] (a view)."""
    return expert_rows(experts, "down_proj")


def plant_moe(model: nn.Module, mark: int):
    """Make expert MOE_EXPERT of block MOE_BLOCK write massive values into MOE_DIM on token id `mark`; its MoE parts."""
    plant_expert(
        model, MOE_BLOCK, MOE_DIM, mark=mark, expert=MOE_EXPERT, unit=MOE_UNIT, carrier=MOE_CARRIER, gain=MOE_GAIN
    )
    return find_structure(model).moe(MOE_BLOCK)


# ---- models a rewrite must fold: a MARK value far above float16's maximum ----------------------------------

REWRITE_DIM = 4


def w_word(i: int) -> str:
    """Token id i as the word `w{i}` (for `word_tokenizer`)."""
    return f"w{i}"


def planted_for_rewrite(family: str) -> nn.Module:
    """A tiny model of `family` (a `tiny_model` family, "-tied" for tied embeddings, or "mixtral") whose MARK token
    carries a value far above the float16 maximum in dim REWRITE_DIM."""
    if family == "mixtral":
        torch.manual_seed(0)
        model = mixtral().eval()
        plant_moe(model, MARK)
        experts = find_structure(model).mlp(1).experts
        inter = down_rows(experts).shape[-1]
        with torch.no_grad():  # its up row: a hidden product near 14,000 fits float16, the write does not
            experts.gate_up_proj[MOE_EXPERT, inter + MOE_UNIT] *= 4000.0
        return model
    base, tied = family.removesuffix("-tied"), family.endswith("-tied")
    model = tiny_model(base)
    if tied:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    if base == "gemma3":
        plant_sandwich(model, block=1, dim=REWRITE_DIM, value=1.1e5)
    else:
        plant_massive(model, block=1, dim=REWRITE_DIM, gain=3000.0 if base == "gpt2" else 300.0)
    return model


def rewrite_inputs(bos: bool):
    """QuantInputs of 4 held-out and 2 calibration windows of 24 ids, MARK at position 0 (with a BOS) or 3."""
    from massact.quant import QuantInputs

    ids = torch.randint(10, VOCAB - 1, (6, 24), generator=torch.Generator().manual_seed(0))
    ids[ids == MARK] = 10
    ids[:, 0 if bos else 3] = MARK
    return QuantInputs(windows=ids[:4], calibration=ids[4:], prefix_tokens=[w_word(MARK)] if bos else [])


# ---- quantization: a planted model with an id tokenizer, and windows that start with MARK ------------------


class IdTokenizer:
    """Text "7 12 30" <-> ids [7, 12, 30]; enough tokenizer for calibration and tracing."""

    all_special_ids: list[int] = []

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        return {"input_ids": torch.tensor([[int(t) for t in text.split()]])}

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(i) for i in ids)

    def convert_ids_to_tokens(self, token_id):
        return str(token_id)


def planted_for_quant(family: str):
    """A 4-block tiny model whose block 1 writes a massive value into dim 4 of every MARK token."""
    from massact.models.loading import LoadedModel

    model = tiny_model(family)
    plant_massive(model, block=1, dim=4)
    return LoadedModel(model=model, tokenizer=IdTokenizer(), name=f"planted-{family}")


def marked_windows(rows: int, seed: int, length: int = 24) -> torch.Tensor:
    """Random ids with MARK first: the first token dominates every window."""
    ids = torch.randint(10, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = MARK
    return ids


# ---- a saved LLaMA whose '.' carries a massive value, with its corpus (corpus scans, merges, launches) -------

PLANTED_DIM = 5
PLANTED_VALUE = 3000.0
CORPUS_TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine, they say.\n"
    "All that glitters is not gold. Fortune favours the bold, and the meek shall wait.\n"
) * 40


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE of 300 tokens trained on CORPUS_TEXT."""
    from tokenizers import decoders, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [CORPUS_TEXT], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=None)


def save_corpus_model(folder: Path) -> Path:
    """`folder` holding a saved 3-block LLaMA whose '.' token embedding carries PLANTED_VALUE in dim PLANTED_DIM,
    its tokenizer, and corpus.txt (CORPUS_TEXT); conftest's `tiny_dir` fixture makes one per test module."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    dot = tokenizer.convert_tokens_to_ids(".")
    with torch.no_grad():
        model.model.embed_tokens.weight[dot, PLANTED_DIM] = PLANTED_VALUE
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "corpus.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    return folder


def assert_same_summary(a, b) -> None:
    """Two `CorpusSummary`s hold the same sequences, arrays (bit for bit) and sites (totals to 1e-12)."""
    assert a.seq_ids == b.seq_ids and a.sources == b.sources
    assert a.top == b.top
    for key, arr in a.arrays().items():
        assert torch.equal(torch.from_numpy(arr), torch.from_numpy(b.arrays()[key])), key
    assert a.sites.keys() == b.sites.keys()
    for key, s in a.sites.items():
        t = b.sites[key]
        assert (s.count, s.sequences, s.low, s.high, s.tokens, s.per_sequence) == (
            t.count, t.sequences, t.low, t.high, t.tokens, t.per_sequence,
        )  # fmt: skip
        assert math.isclose(s.total, t.total, rel_tol=1e-12) and math.isclose(s.total_sq, t.total_sq, rel_tol=1e-12)


# ---- comparing two captures of the same model -------------------------------------------------------------


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and values, NaN equal to NaN (later blocks of the NaN-planted model are all NaN)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def assert_same_records(deferred, direct) -> None:
    """Two captures' per-sequence records (`capture_block_stats`) hold the same values, NaN equal to NaN."""
    assert len(deferred) == len(direct)
    for seq_a, seq_b in zip(deferred, direct):
        assert seq_a.kept.keys() == seq_b.kept.keys()
        assert all(_equal(seq_a.kept[i], seq_b.kept[i]) for i in seq_b.kept)
        for a, b in zip(seq_a.blocks, seq_b.blocks):
            assert a.median == b.median or (a.median != a.median and b.median != b.median)
            assert a.all_nonfinite == b.all_nonfinite
            ranked = ("dim_max", "token_max", "positions")
            if not b.all_nonfinite:  # an all-NaN block ranks nothing (its "top" are ties of zeros; never shown)
                ranked += ("top_values", "top_tokens", "top_dims")
            for name in ranked:
                assert _equal(getattr(a, name), getattr(b, name)), name
            if not b.massive_truncated:  # truncated lists are the largest, in magnitude order (ties aside)
                for name in ("massive_tokens", "massive_dims", "massive_values"):
                    assert _equal(getattr(a, name), getattr(b, name)), name
            else:
                assert _equal(a.massive_values.abs(), b.massive_values.abs())
            assert (a.massive_truncated, a.nonfinite) == (b.massive_truncated, b.nonfinite)
            assert repr(a.nonfinite_sites) == repr(b.nonfinite_sites)  # nan == nan here


# ---- reference computations in plain torch: what a quantized model computes, written out here -------------


def round_trip(x: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric round-to-nearest: clamp(round(x / scale), -Q, Q) * scale with Q = 2^(bits-1) - 1 (a zero scale:
    the entries are zero, and stay zero)."""
    top = 2 ** (bits - 1) - 1
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (x / scale).round().clamp(-top, top) * scale


@contextmanager
def quantized_by_hand(
    model: nn.Module,
    weight_bits: int | None,
    act_bits: int | None,
    kv_bits: int | None = None,
    head_dim: int = 8,
    keep_first: int = 0,
) -> Iterator[None]:
    """Inside: every Linear (and Conv1D) but the output head has its weight rounded with one scale per output
    channel (max |row| / Q) and its input [batch, tokens, channels] with one scale for the whole tensor
    (max |x| / Q) but its first `keep_first` tokens, which pass as they are; the outputs of the `k_proj` /
    `v_proj` Linears are rounded per token and head of `head_dim`, around their bias, but the first
    `keep_first` tokens."""
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)) and m is not head]
    saved = [m.weight.detach().clone() for m in linears]
    handles = []

    def round_input(module, args):
        x = args[0]
        rest = x[:, keep_first:]
        rounded = round_trip(rest, rest.abs().amax() / (2 ** (act_bits - 1) - 1), act_bits)
        return (torch.cat([x[:, :keep_first], rounded], dim=1), *args[1:])

    def round_heads(module, args, output):
        bias = module.bias if module.bias is not None else torch.zeros_like(output[0, 0])
        heads = (output - bias).unflatten(-1, (-1, head_dim))
        scale = heads.abs().amax(-1, keepdim=True) / (2 ** (kv_bits - 1) - 1)
        rounded = round_trip(heads, scale, kv_bits).flatten(-2) + bias
        return torch.cat([output[:, :keep_first], rounded[:, keep_first:]], dim=1)

    try:
        with torch.no_grad():
            for module in linears:
                if weight_bits is not None:
                    rows = _weight_rows(module)
                    scale = rows.abs().amax(1, keepdim=True) / (2 ** (weight_bits - 1) - 1)
                    rows.copy_(round_trip(rows, scale, weight_bits))
                if act_bits is not None:
                    handles.append(module.register_forward_pre_hook(round_input))
        if kv_bits is not None:
            kv = [m for n, m in model.named_modules() if n.endswith((".k_proj", ".v_proj"))]
            assert kv, "no k_proj / v_proj Linears to round"
            handles += [m.register_forward_hook(round_heads) for m in kv]
        yield
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for module, weight in zip(linears, saved, strict=True):
                module.weight.copy_(weight)


@torch.no_grad()
def perplexity_by_hand(model: nn.Module, windows: torch.Tensor) -> float:
    """exp of the mean next-token cross-entropy over every window position after the first, in one forward."""
    logits = model(input_ids=windows).logits
    targets = windows[:, 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), targets)
    return float(nll.exp())
