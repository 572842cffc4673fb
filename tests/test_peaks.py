"""Running maxima: BlockPeaks (per block) and ChannelMaxima (per channel of named modules) equal direct computations."""

from __future__ import annotations

import pytest
import torch
from planting import MARK, plant_massive, tiny_model

from massact.capture.peaks import BlockPeaks, ChannelMaxima, linear_inputs
from massact.models.structure import find_structure, is_linear


def _batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    first = torch.randint(10, 64, (2, 9), generator=generator)
    first[0, 0] = MARK
    return [first, torch.randint(10, 64, (3, 5), generator=generator)]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_block_peaks_and_token_rms_over_two_forwards_equal_the_hidden_states(family):
    model = tiny_model(family)
    with torch.no_grad():
        plant_massive(model, block=1, dim=4, gain=900.0)
    structure = find_structure(model)
    hidden: list[list[torch.Tensor]] = [[] for _ in structure.blocks]
    with torch.no_grad(), BlockPeaks(model, structure, token_rms=True) as peaks:
        for ids in _batches():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
            for i in range(len(structure)):  # hidden_states[i + 1] is block i's output, but the last is normed
                hidden[i].append(states[i + 1].reshape(-1, states[i + 1].shape[-1]))
    found, bad = peaks.peaks()
    rms = peaks.token_rms()
    assert bad == []
    for i in range(len(structure) - 1):
        h = torch.cat(hidden[i])
        assert found[i] == pytest.approx(float(h.abs().max()), rel=1e-6)
        assert rms[i] == pytest.approx(float(h.pow(2).mean(-1).sqrt().max()), rel=1e-5)
    assert found[1] > 100 and rms[1] > found[1] / 32**0.5 * 0.99  # one dim carries the token's whole norm


def test_token_rms_leaves_out_non_finite_tokens_and_a_block_that_never_ran_is_none():
    model = tiny_model("llama")
    structure = find_structure(model)
    last = len(structure) - 1
    poisoned: list[torch.Tensor] = []

    def poison(module, args, output):
        h = (output[0] if isinstance(output, tuple) else output).clone()
        h[0, 2, 0] = float("inf")
        poisoned.append(h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = structure.blocks[last].register_forward_hook(poison)
    try:
        with torch.no_grad(), BlockPeaks(model, structure, token_rms=True) as peaks:
            model(input_ids=_batches()[0])
    finally:
        handle.remove()
    found, bad = peaks.peaks()
    assert bad == [last]
    out = poisoned[0]
    finite = torch.cat([out[0, :2], out[0, 3:], out[1]])
    assert found[last] == pytest.approx(float(out.abs().nan_to_num(0.0, 0.0, 0.0).max()), rel=1e-6)
    assert peaks.token_rms()[last] == pytest.approx(float(finite.pow(2).mean(-1).sqrt().max()), rel=1e-5)
    assert BlockPeaks(model, structure).token_rms() == [None] * len(structure)
    with torch.no_grad(), BlockPeaks(model, structure) as plain:  # no RMS unless asked
        model(input_ids=_batches()[1])
    assert plain.token_rms() == [None] * len(structure) and None not in plain.peaks()[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_channel_maxima_of_inputs_and_outputs_equal_plain_hooks(family):
    model = tiny_model(family)
    structure = find_structure(model)
    norm = next(n for n, m in structure.blocks[0].named_modules() if "norm" in type(m).__name__.lower())
    norm_name = f"{structure.block_path(0)}.{norm}"
    linear_names = [n for n, m in model.named_modules() if is_linear(m)]
    seen: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(module, args, output):
            x = args[0] if name in linear_names else output
            seen.setdefault(name, []).append(x.reshape(-1, x.shape[-1]))

        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in [*linear_names, norm_name]]
    try:
        with torch.no_grad(), linear_inputs(model) as inputs, ChannelMaxima(model, [norm_name], "output") as outputs:
            for ids in _batches():
                model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    assert list(inputs.maxima) == linear_names
    for name in linear_names:
        assert torch.equal(inputs.maxima[name], torch.cat(seen[name]).abs().amax(0))
    assert torch.equal(outputs.maxima[norm_name], torch.cat(seen[norm_name]).abs().amax(0))


def test_a_linear_that_never_runs_reports_zeros_of_its_input_width():
    model = tiny_model("llama")
    model.unused = torch.nn.Linear(5, 3)
    with torch.no_grad(), linear_inputs(model) as inputs:
        model(input_ids=_batches()[1])
    assert torch.equal(inputs.maxima["unused"], torch.zeros(5))
    with ChannelMaxima(model, ["model.norm"], "output") as outputs:
        pass
    assert outputs.maxima == {}


def test_channel_hooks_leave_padding_out_and_squares_sum_the_real_tokens():
    """ChannelMaxima and ChannelSquares are one hook: padded positions (the model's attention mask) count in
    neither; with a huge value planted in the padding, the maxima and sums are those of the real tokens alone."""
    from massact.capture.forward import run_forward
    from massact.capture.peaks import ChannelSquares

    model = tiny_model("llama")
    name = next(n for n, m in model.named_modules() if is_linear(m) and n.endswith("mlp.up_proj"))
    ids = _batches()[0]
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding in the second window
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with ChannelMaxima(model, [name], "input") as maxima, ChannelSquares(model, [name]) as squares:
            run_forward(model, ids, mask)
    finally:
        handle.remove()
    real = seen[0][mask.bool()]  # [real tokens, channels]
    assert real.shape[0] == 9 + 6
    assert torch.equal(maxima.maxima[name], real.abs().amax(0))
    sums, count = squares.sums[name]
    assert count == 15 and torch.allclose(sums, real.double().square().sum(0), rtol=1e-12)
    everything = seen[0].reshape(-1, seen[0].shape[-1])  # what the hook saw, padding included
    assert not torch.equal(everything.abs().amax(0), real.abs().amax(0))  # so leaving padding out mattered
    assert count < everything.shape[0]
