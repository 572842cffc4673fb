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
from massact.models.checkpoint import empty_model, open_checkpoint
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
from massact.models.memory import Workload, default_budget, gib, module_bytes, parse_size
from massact.models.names import DEFAULT_MODEL, check_local_source, looks_like_path
from massact.models.offload import BlockOffload
from massact.models.quiet import quiet_loading
from massact.models.registry import find_loader
from massact.models.structure import find_structure
from massact.progress import say


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


def _load_input_processors(
    source: str, trust_remote_code: bool, tokenizer: object | None, processor: object | None, **kwargs
) -> tuple[object | None, object | None]:
    """The tokenizer and image processor beside the model, where the caller gave none (None where there is none)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
        except Exception:  # a vision model has no tokenizer
            tokenizer = None
    if processor is None:
        try:  # vision models, and image-text models (CLIP) that have a tokenizer as well
            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
        except Exception:
            processor = None
    return tokenizer, processor


def load_model(
    source: str | nn.Module = DEFAULT_MODEL,
    *,
    tokenizer: object | None = None,
    processor: object | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    offload: str = "auto",
    max_memory: str | int | None = None,
    workload: Workload | None = None,
) -> LoadedModel:
    """Load `source`: 'default', a .gguf file, a model directory, a hub id, or a model object.

    `tokenizer` and `processor` (an image processor) replace the ones found beside the model; a model object
    needs them given. A model object is used as it is; one in training mode is put in eval mode (dropout off),
    which is said in one line.

    `offload`: "none" loads every weight; "blocks" builds the model without weights and reads it from its
    checkpoint one block at a time for each forward analysis (`capture.blockwise`); "auto" (the default)
    picks "blocks" when the weights plus one `workload` pass do not fit `max_memory` (default: the memory
    available on the device, less 10%, at least 1 GiB) and says so in one line.
    """
    check_offload(offload, device_map)
    budget = parse_size(max_memory) if max_memory is not None else None
    if isinstance(source, nn.Module):
        if offload == "blocks":
            raise MassactError(
                "`offload='blocks'` reads a model from its checkpoint; a model object already in memory runs in "
                "memory: give its folder or hub id instead, or use `offload='none'`"
            )
        if source.training:
            say(f"{type(source).__name__} was in training mode: put in eval mode (dropout off) for the analyses")
            source.eval()
        return LoadedModel(model=source, tokenizer=tokenizer, processor=processor, name=type(source).__name__)
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
            if offload == "blocks":
                raise MassactError(f"{source}: a {loader.name} folder runs in memory; use `offload='none'`")
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
        blocks = device_map is None and _runs_blockwise(
            cls, config, offload, torch_dtype, torch.device(device), budget, workload
        )
        with quiet_loading():
            if blocks:
                model, checkpoint = open_checkpoint(cls, source, config, **kwargs)
            else:
                model = cls.from_pretrained(source, config=config, **kwargs)
    except MassactError:
        raise
    except Exception as exc:
        raise MassactError(
            f"could not load model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "offline? give a local model directory or a .gguf file"
        ) from None
    block_offload = None
    if blocks:
        block_offload = BlockOffload.attach(model, checkpoint, torch.device(device), _budget(budget, device))
    elif device_map is None:
        model = model.to(device)
    model.eval()
    extra = {"local_files_only": True} if local_only else {}
    tokenizer, processor = _load_input_processors(source, trust_remote_code, tokenizer, processor, **extra)
    if quantization is None:
        method = getattr(getattr(config, "quantization_config", None), "quant_method", None)
        if method is None and isinstance(getattr(config, "quantization_config", None), dict):
            method = config.quantization_config.get("quant_method")
        quantization = f"{method} quantized" if method else None
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        name=name,
        source=shown,
        quantization=quantization,
        offload=block_offload,
    )


OFFLOADS = ("none", "blocks", "auto")


def check_offload(offload: str, device_map: str | dict | None = None) -> None:
    """Refuse an unknown offload, or block execution together with a device map."""
    if offload not in OFFLOADS:
        raise MassactError(f"`offload={offload!r}`: give one of none, blocks, auto")
    if offload == "blocks" and device_map is not None:
        raise MassactError(
            "`offload='blocks'` and `device_map` both place the weights; give one of them (a device map spreads "
            "the model over devices, blocks read it one block at a time)"
        )


def _budget(budget: int | None, device: str) -> int:
    return budget if budget is not None else default_budget(device)


def _is_text_model(config) -> bool:
    return getattr(config, "vision_config", None) is None and getattr(config, "image_size", None) is None


def _runs_blockwise(
    cls, config, offload: str, dtype: torch.dtype, device: torch.device, budget: int | None, workload
) -> bool:
    """Whether to run block by block: asked for, or ("auto") when the weights and one pass exceed the budget."""
    if offload == "none":
        return False
    if not _is_text_model(config):
        if offload == "blocks":
            raise MassactError(
                f"`offload='blocks'` runs text models; {config.model_type} has a vision part: use `offload='none'` "
                "or a device map"
            )
        return False
    with quiet_loading():
        meta = empty_model(cls, config, dtype)
    weights = module_bytes(meta)
    limit = _budget(budget, str(device))
    needed = weights + (workload or Workload()).working_bytes(meta, dtype)
    block = max(module_bytes(b) for b in find_structure(meta).blocks)
    if offload == "auto" and needed <= limit:
        return False
    line = (
        f"weights {gib(weights)} ({str(dtype).removeprefix('torch.')}), budget {gib(limit)}, block {gib(block)}: "
        "running block by block"
    )
    if offload == "auto":
        line += " (the model does not fit; --offload none to load it whole)"
    say(line)
    if limit < 2 * block:
        say(
            f"warning: the budget {gib(limit)} is under two blocks ({gib(2 * block)}); reading will not overlap "
            "computing, and the run may use more than the budget"
        )
    return True
