"""Saved tiny planted models of six families, and the comparison of an in-memory run's JSON with a block-by-block one.

`saved_family(name, root)` writes a folder a user could give to any command: the model (float32 safetensors),
a number tokenizer ("12 7 30" -> ids 12, 7, 30; the planted id as BOS where the family has one) and
`corpus.txt` / `prompt.txt` with the planted id.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from planting import MARK, VOCAB, number_tokenizer, plant_expert, plant_massive, plant_sandwich, tiny_model
from torch import nn

PLANT_BLOCK, PLANT_DIM = 1, 4
# family -> (has a BOS, how the plant is made)
FAMILIES = {
    "llama": True,  # rotary, GQA, a BOS
    "gemma3": True,  # sandwich norms, (1 + w) gains, embed_scale, tied embeddings, sliding window
    "qwen2": False,  # q/k/v biases, no BOS
    "gpt2": False,  # absolute positions, Conv1D, tied embeddings
    "mixtral": True,  # fused 3-D experts, a router
    "gpt_oss": False,  # learned sink logits, sliding and full layers, fused experts with biases
    "qwen3_next": False,  # gated DeltaNet linear attention, gated attention, shared experts
}


def _mixtral() -> nn.Module:
    import transformers as tf

    config = tf.MixtralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
        bos_token_id=MARK, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    return tf.MixtralForCausalLM(config).eval()


@torch.no_grad()
def planted_family(family: str) -> nn.Module:
    """The planted tiny model of `family`: block 1 writes a massive value into dim 4 of the MARK token."""
    model = _mixtral() if family == "mixtral" else tiny_model(family)
    if family == "qwen2":  # random q/k/v biases, so that they matter
        generator = torch.Generator().manual_seed(1)
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    if family == "gemma3":
        plant_sandwich(model, block=PLANT_BLOCK, dim=PLANT_DIM)
    elif family in ("mixtral", "gpt_oss", "qwen3_next"):
        plant_expert(model, PLANT_BLOCK, PLANT_DIM, mark=MARK, gain=60.0)
    else:
        plant_massive(model, block=PLANT_BLOCK, dim=PLANT_DIM)
    return model.eval()


def corpus_text(words: int = 1200, seed: int = 0) -> str:
    """Numbers (token ids) with the planted one every 9th."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (words,), generator=generator)
    ids[ids == MARK] = 10
    ids[::9] = MARK
    return " ".join(str(int(i)) for i in ids)


def saved_family(family: str, root: Path) -> Path:
    """Save `family`'s planted model, tokenizer, corpus.txt and prompt.txt under `root/family`."""
    folder = root / family
    planted_family(family).save_pretrained(folder)
    number_tokenizer(VOCAB, bos=MARK if FAMILIES[family] else None).save_pretrained(folder)
    (folder / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    prompt = [str(i) for i in (12, 30, MARK, 41, 19, 22, 17, 33)]
    (folder / "prompt.txt").write_text(" ".join(prompt), encoding="utf-8")
    return folder


def differences(memory: object, blocks: object, rel: float = 1e-6, path: str = "") -> list[str]:
    """Where two JSON values differ: numbers beyond `rel` relative (or 1e-12 absolute near 0), anything else at all.

    The `execution` entry (how the run executed, and its peak memory) is expected to differ and left out.
    """
    if isinstance(memory, dict) and isinstance(blocks, dict):
        keys = (set(memory) | set(blocks)) - {"execution"}
        return [d for k in sorted(keys, key=str) for d in differences(memory.get(k), blocks.get(k), rel, f"{path}.{k}")]
    if isinstance(memory, list) and isinstance(blocks, list):
        if len(memory) != len(blocks):
            return [f"{path}: {len(memory)} items in memory, {len(blocks)} block by block"]
        return [
            d
            for i, (a, b) in enumerate(zip(memory, blocks, strict=True))
            for d in differences(a, b, rel, f"{path}[{i}]")
        ]  # noqa: E501
    if isinstance(memory, float | int) and isinstance(blocks, float | int) and not isinstance(memory, bool):
        a, b = float(memory), float(blocks)
        if a == b or (math.isnan(a) and math.isnan(b)):
            return []
        if math.isfinite(a) and math.isfinite(b) and abs(a - b) <= max(rel * max(abs(a), abs(b)), 1e-12):
            return []
        return [f"{path}: {memory} in memory, {blocks} block by block"]
    return [] if memory == blocks else [f"{path}: {memory!r} in memory, {blocks!r} block by block"]


def count_spills(monkeypatch) -> list[int]:
    """After each block output is stored, how many have gone to disk so far (`ActivationStore.spilled`)."""
    from massact.capture import blockwise

    spills: list[int] = []
    put = blockwise.ActivationStore.put

    def counted(self, batch, output, generation):
        put(self, batch, output, generation)
        spills.append(self.spilled)

    monkeypatch.setattr(blockwise.ActivationStore, "put", counted)
    return spills
