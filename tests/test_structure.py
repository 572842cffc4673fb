"""Structure discovery finds blocks, attention and MLP in many families, with no per-model code."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch import nn

from massact.errors import MassactError
from massact.models.structure import find_structure

SMALL = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64}
TEXT = {**SMALL, "vocab_size": 64}


def _configs():
    yield "llama", tf.LlamaForCausalLM, tf.LlamaConfig(**TEXT, num_key_value_heads=2), "model.layers"
    yield "mistral", tf.MistralForCausalLM, tf.MistralConfig(**TEXT, num_key_value_heads=2), "model.layers"
    yield "qwen2", tf.Qwen2ForCausalLM, tf.Qwen2Config(**TEXT, num_key_value_heads=2), "model.layers"
    yield "qwen3", tf.Qwen3ForCausalLM, tf.Qwen3Config(**TEXT, num_key_value_heads=2, head_dim=8), "model.layers"
    yield "gemma", tf.GemmaForCausalLM, tf.GemmaConfig(**TEXT, num_key_value_heads=1, head_dim=8), "model.layers"
    yield "gemma2", tf.Gemma2ForCausalLM, tf.Gemma2Config(**TEXT, num_key_value_heads=1, head_dim=8), "model.layers"
    yield (
        "gemma3",
        tf.Gemma3ForCausalLM,
        tf.Gemma3TextConfig(**TEXT, num_key_value_heads=1, head_dim=8),
        "model.layers",
    )
    yield "phi", tf.PhiForCausalLM, tf.PhiConfig(**TEXT), "model.layers"
    moe = {"num_key_value_heads": 2, "num_experts_per_tok": 2}
    yield "mixtral", tf.MixtralForCausalLM, tf.MixtralConfig(**TEXT, **moe, num_local_experts=4), "model.layers"
    yield (
        "qwen2_moe",
        tf.Qwen2MoeForCausalLM,
        tf.Qwen2MoeConfig(**TEXT, **moe, num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=16),
        "model.layers",
    )
    yield (
        "qwen3_moe",
        tf.Qwen3MoeForCausalLM,
        tf.Qwen3MoeConfig(**TEXT, **moe, num_experts=4, moe_intermediate_size=16, head_dim=8),
        "model.layers",
    )
    yield "olmoe", tf.OlmoeForCausalLM, tf.OlmoeConfig(**TEXT, **moe, num_experts=4), "model.layers"
    yield "gpt2", tf.GPT2LMHeadModel, tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=64), "transformer.h"
    yield "gpt_neox", tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig(**TEXT), "gpt_neox.layers"
    yield (
        "opt",
        tf.OPTForCausalLM,
        tf.OPTConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            ffn_dim=64,
            vocab_size=64,
            word_embed_proj_dim=32,
        ),
        "model.decoder.layers",
    )
    yield (
        "falcon",
        tf.FalconForCausalLM,
        tf.FalconConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, vocab_size=64),
        "transformer.h",
    )
    yield "bert", tf.BertModel, tf.BertConfig(**TEXT), "encoder.layer"
    yield "vit", tf.ViTModel, tf.ViTConfig(**SMALL, image_size=32, patch_size=8), None
    yield (
        "dinov2",
        tf.Dinov2Model,
        tf.Dinov2Config(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8
        ),
        None,
    )
    yield "clip_vision", tf.CLIPVisionModel, tf.CLIPVisionConfig(**SMALL, image_size=32, patch_size=8), None


CASES = list(_configs())
MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}


@pytest.mark.parametrize("name,cls,config,path", CASES, ids=[c[0] for c in CASES])
def test_finds_blocks_attention_and_mlp(name, cls, config, path):
    torch.manual_seed(0)
    model = cls(config)
    structure = find_structure(model)
    assert len(structure) == 3
    if path is not None:
        assert structure.blocks_path == path
    assert all(b is model.get_submodule(structure.block_path(i)) for i, b in enumerate(structure.blocks))
    for i in range(3):
        attn, mlp = structure.attn(i), structure.mlp(i)
        assert attn is not None and mlp is not None, (structure.attn_names, structure.mlp_names)
        assert "attention" in type(attn).__name__.lower() or "attn" in type(attn).__name__.lower()
        assert sum(p.numel() for p in mlp.parameters()) > 0
        moe = structure.moe(i)
        assert (moe is not None) == (name in MOE)
        if moe is not None:  # the experts are one module of 3-D weights; the router scores each of them
            experts = mlp.get_submodule(moe.experts)
            assert moe.fused and moe.num_experts == 4 and experts.down_proj.shape[0] == 4
            assert mlp.get_submodule(moe.router).weight.shape[0] == 4


def test_full_clip_picks_largest_tower_and_override_selects_the_other():
    config = tf.CLIPConfig(
        text_config={**SMALL, "num_hidden_layers": 2, "vocab_size": 64},
        vision_config={**SMALL, "num_hidden_layers": 4, "image_size": 32, "patch_size": 8},
    )
    model = tf.CLIPModel(config)
    structure = find_structure(model)
    assert len(structure) == 4 and "vision" in structure.blocks_path
    assert any("text" in alt for alt in structure.alternatives)
    text_path = next(alt for alt in structure.alternatives if "text" in alt)
    assert len(find_structure(model, text_path)) == 2


def test_unknown_structure_names_the_override():
    with pytest.raises(MassactError, match="`blocks_path`"):
        find_structure(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_bad_override_is_a_clear_error():
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**TEXT, num_key_value_heads=2))
    with pytest.raises(MassactError, match="no such module"):
        find_structure(model, "model.nope")
    with pytest.raises(MassactError, match="not a list of blocks"):
        find_structure(model, "model.norm")
