"""The Hugging Face hub: whether it answers (quickly, even with a name that does not resolve), and whether a
hub id can be fetched or must come from the local cache."""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from urllib.parse import urlparse

from massact.errors import MassactError
from massact.models.names import near_misses


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


def check_hub_source(source: str) -> bool:
    """Fail at once for a hub id that cannot be fetched; True when it must come from the local cache."""
    if _hub_cached(source) and not hub_reachable():
        return True
    if hub_reachable():
        return False
    guesses = near_misses(source)
    hint = f"; did you mean {' or '.join(f'`{g}`' for g in guesses)}?" if guesses else ""
    why = "the hub is set offline (HF_HUB_OFFLINE)" if _offline_by_setting() else "the hub cannot be reached"
    raise MassactError(
        f"{source}: no such file or directory, and {why}{hint} "
        "(give 'default', a .gguf file, a model directory or a cached hub id)"
    )
