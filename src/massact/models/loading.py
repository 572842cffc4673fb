"""Load a model from a hub id, a local directory, a GGUF file or the bundled default: `load_model`.

What it builds on lives beside it, one idea a module: `loaded` (`LoadedModel`), `device` (device and dtype
checks), `hub` (hub probing), `names` (near-miss names), `gguf` (GGUF conversion and cache), `quiet`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from massact.errors import MassactError
from massact.models import gguf
from massact.models.device import check_device as check_device
from massact.models.device import check_dtype as check_dtype
from massact.models.device import default_device as default_device
from massact.models.device import resolve_dtype as resolve_dtype
from massact.models.gguf import cache_root as cache_root
from massact.models.gguf import default_gguf_path as default_gguf_path
from massact.models.gguf import gguf_cache_dir as gguf_cache_dir
from massact.models.gguf import gguf_quantization as gguf_quantization
from massact.models.gguf import gguf_weight_types as gguf_weight_types
from massact.models.hub import check_hub_source
from massact.models.hub import hub_reachable as hub_reachable
from massact.models.loaded import LoadedModel as LoadedModel
from massact.models.names import DEFAULT_MODEL, check_local_source, looks_like_path
from massact.models.quiet import quiet_loading
from massact.models.registry import find_loader


def _model_class(config, trust_remote_code: bool):
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    return AutoModel


def _load_input_processors(source: str, trust_remote_code: bool, **kwargs) -> tuple[object | None, object | None]:
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = processor = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except Exception:  # a vision model has no tokenizer
        tokenizer = None
    try:  # vision models, and image-text models (CLIP) that have a tokenizer as well
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except Exception:
        processor = None
    return tokenizer, processor


def load_model(
    source: str | nn.Module = DEFAULT_MODEL,
    *,
    tokenizer: object | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load `source`: 'default', a .gguf file, a model directory, a hub id, or a model object."""
    if isinstance(source, nn.Module):
        return LoadedModel(model=source.eval(), tokenizer=tokenizer, name=type(source).__name__)
    check_dtype(dtype)
    device = check_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    name = shown = source
    quantization = None
    local_only = False
    if source == DEFAULT_MODEL:
        path = default_gguf_path()
        name = "SmolLM2-135M-Instruct"
        shown = path.name
        source = str(path)
    if looks_like_path(source):
        check_local_source(source)
        path = Path(source).expanduser()
        if path.is_file():
            if path.suffix != ".gguf":
                raise MassactError(f"{source}: a file that is not .gguf; give a model directory or a .gguf file")
            converted = gguf_cache_dir(path)
            if not (converted / "config.json").exists():
                gguf.convert_gguf(path, converted)
            quantization = gguf_quantization(path, torch_dtype, gguf.cached_weight_types(path, converted))
            path = converted
        elif (loader := find_loader(path)) is not None:  # a format registered by a package (massact train)
            try:
                return loader.load(path, tokenizer=tokenizer, dtype=torch_dtype, device=device, name=name)
            except MassactError:
                raise
            except Exception as exc:
                raise MassactError(
                    f"{source}: not a readable {loader.name} model ({type(exc).__name__}); "
                    "give the folder of a finished run"
                ) from None
        elif not (path / "config.json").exists():
            raise MassactError(f"{source}: directory has no config.json, so it holds no transformers model")
        source = str(path)
    else:
        local_only = check_hub_source(source)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=local_only)
        cls = _model_class(config, trust_remote_code)
        kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if local_only:
            kwargs["local_files_only"] = True
        if device_map is not None:
            kwargs["device_map"] = device_map
        with quiet_loading():
            model = cls.from_pretrained(source, config=config, **kwargs)
    except MassactError:
        raise
    except Exception as exc:
        raise MassactError(
            f"could not load model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "offline? give a local model directory or a .gguf file"
        ) from None
    if device_map is None:
        model = model.to(device)
    model.eval()
    if tokenizer is None:
        extra = {"local_files_only": True} if local_only else {}
        tokenizer, processor = _load_input_processors(source, trust_remote_code, **extra)
    else:
        processor = None
    if quantization is None:
        method = getattr(getattr(config, "quantization_config", None), "quant_method", None)
        if method is None and isinstance(getattr(config, "quantization_config", None), dict):
            method = config.quantization_config.get("quant_method")
        quantization = f"{method} quantized" if method else None
    return LoadedModel(
        model=model, tokenizer=tokenizer, processor=processor, name=name, source=shown, quantization=quantization
    )
