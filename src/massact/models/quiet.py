"""Loading without transformers' own progress bars and notes: massact's one line says what loads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_loading(notes: bool = False) -> Iterator[None]:
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
