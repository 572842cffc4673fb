"""`massact rewrite --check-quant`: it says its cost before any work, adds exactly the passes it says, and keeps
at most one model beside the original in memory at any moment (not original + rewritten + quantized copies)."""

from __future__ import annotations

import gc
import re

import pytest
import torch
from planting import planted_for_rewrite as planted
from planting import rewrite_inputs as _inputs
from planting import w_word as _word
from planting import word_tokenizer

from massact.models.loading import load_model
from massact.rewrite import RewriteConfig, run


class _Watch:
    """While active: the windows every model's first block runs on (one per window per pass, in memory or block
    by block), and the most causal-LM models holding real (not meta) weights alive at any block-0 call."""

    def __init__(self, original: torch.nn.Module) -> None:
        self.windows = 0
        self.most_models = 0
        self._handle = None
        self._original = original
        self._before: set[int] = set()

    def __enter__(self) -> _Watch:
        gc.collect()  # models other tests left alive are not this run's: count only the original and new ones
        self._before = {id(o) for o in _models_with_weights()} - {id(self._original)}
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._pre)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _pre(self, module: torch.nn.Module, args: tuple) -> None:
        attention = getattr(module, "self_attn", None)
        if not type(module).__name__.endswith("DecoderLayer") or getattr(attention, "layer_idx", None) != 0:
            return
        self.windows += args[0].shape[0]
        alive = [o for o in _models_with_weights() if id(o) not in self._before]
        self.most_models = max(self.most_models, len(alive))


def _models_with_weights() -> list[torch.nn.Module]:
    """The causal-LM models alive in the process that hold real (not meta) weights."""
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, torch.nn.Module)
        and type(o).__name__.endswith("ForCausalLM")
        and any(not p.is_meta for p in o.parameters())
    ]


def _rewrite(check_quant: str | None) -> tuple[_Watch, dict]:
    model = planted("qwen2")
    loaded = load_model(model, tokenizer=word_tokenizer(_word, bos=False))
    with _Watch(model) as watch:
        result = run(loaded, _inputs(bos=False), RewriteConfig(rescale=0.25, check_quant=check_quant, batch_size=1))
    return watch, result.to_json()


def test_check_quant_says_its_cost_first_and_adds_exactly_those_passes(capsys):
    without, _ = _rewrite(None)
    capsys.readouterr()
    watch, data = _rewrite("w8a8")
    said = capsys.readouterr().err
    first = said.index("--check-quant w8a8 adds")
    assert first < said.index("optimum-quanto's int4 kernel") < said.index("saving and reloading")
    counts = re.search(
        r"adds (\d+) passes .*?\((\d+) over the (\d+) held-out windows, (\d+) over the (\d+) calib", said
    )
    total, held, windows, calib, calib_windows = map(int, counts.groups())
    assert total == held + calib and (windows, calib_windows) == (4, 2)  # `_inputs`: 4 held-out, 2 calibration
    assert watch.windows - without.windows == held * windows + calib * calib_windows
    assert data["check_quant"]["schemes"]["W4"]["real"]["original"] > 0


def test_check_quant_keeps_one_model_beside_the_original_at_a_time():
    without, _ = _rewrite(None)
    watch, data = _rewrite("w8a8")
    assert without.most_models == 2  # the verification: the original and the reloaded rewrite
    assert watch.most_models == 2, "the int8 check must not hold more models than the verification does"
    w8a8 = data["check_quant"]["schemes"]["W8A8"]
    # a power-of-two factor leaves every int8 code as it was: the simulation (the rewritten model read block by
    # block from its folder, the original in memory) agrees on both, as the library does
    assert w8a8["simulated"]["original"] == pytest.approx(w8a8["simulated"]["rewritten"], rel=1e-5)
    assert w8a8["real"]["original"] == pytest.approx(w8a8["real"]["rewritten"], rel=1e-6)
