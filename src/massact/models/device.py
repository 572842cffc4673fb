"""Device and dtype: the defaults, and the checks that refuse what this machine or this torch lacks."""

from __future__ import annotations

import torch

from massact.errors import MassactError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """'auto' means float32 on CPU and bfloat16 on accelerators."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise MassactError(f"`dtype={dtype!r}`: unknown dtype; use one of auto, float32, bfloat16, float16")
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
        raise MassactError(f"`device={device!r}`: unknown device; use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch" if torch.version.cuda is None else "no CUDA device visible"
            raise MassactError(f"`device={device!r}`: CUDA is not available here ({build}); use `device='cpu'`")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise MassactError(
                f"`device={device!r}`: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise MassactError(f"`device={device!r}`: MPS is not available here; use `device='cpu'`")
    elif parsed.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise MassactError(f"`device={device!r}`: XPU is not available here; use `device='cpu'`")
    return device


def check_dtype(dtype: str | torch.dtype | None) -> None:
    """Refuse an unknown dtype name before anything is loaded."""
    if dtype is not None and not isinstance(dtype, torch.dtype) and dtype != "auto" and dtype not in _DTYPES:
        raise MassactError(f"`dtype={dtype!r}`: unknown dtype; use one of auto, float32, bfloat16, float16")
