"""Every analysis package has one entry point, `run(loaded-or-models, inputs, config) -> result`, and its frozen
config dataclass in the package's own `config.py`."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

# package -> the config class(es) its config.py holds (vision has two analyses: the image scan and Fix-Reg-Mean)
ANALYSES = {
    "scan": ("ScanConfig",),
    "corpus": ("CorpusConfig",),
    "interventions": ("InterventionConfig",),
    "attention": ("AttentionConfig",),
    "trace": ("TraceConfig",),
    "quant": ("QuantConfig",),
    "export": ("ExportConfig",),
    "stream": ("StreamConfig",),
    "vision": ("ImageScanConfig", "FixRegMeanConfig"),
    "atlas": ("AtlasConfig",),
    "rewrite": ("RewriteConfig",),
}


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_run_takes_the_model_its_inputs_and_its_config(name):
    package = importlib.import_module(f"massact.{name}")
    run = package.run
    assert inspect.isfunction(run), f"massact.{name}.run is not a function"
    params = list(inspect.signature(run).parameters.values())
    assert len(params) == 3, f"massact.{name}.run{inspect.signature(run)}"
    first, _, config = params
    assert first.name == ("models" if name == "atlas" else "loaded")
    assert config.name == "config"
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    hint = str(config.annotation)
    assert any(cls in hint for cls in ANALYSES[name]), f"massact.{name}.run: config is {hint}"


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_config_is_a_frozen_dataclass_in_config_py(name):
    module = importlib.import_module(f"massact.{name}.config")
    package = importlib.import_module(f"massact.{name}")
    for cls_name in ANALYSES[name]:
        cls = getattr(module, cls_name)
        assert cls.__module__ == f"massact.{name}.config"  # defined there, not imported from elsewhere
        assert getattr(package, cls_name) is cls  # and what the package exports
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert "__post_init__" in vars(cls)  # validated when built


def test_the_vision_fix_reg_mean_entry_point_has_the_same_shape():
    from massact.vision import run_fix_reg_mean

    params = list(inspect.signature(run_fix_reg_mean).parameters)
    assert params[0] == "loaded" and params[-1] == "config" and len(params) == 3
