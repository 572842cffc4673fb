"""Text corpora for corpus-wide statistics: documents in, token windows out."""

from massact.data.corpus import (
    CORPORA,
    corpus_windows,
    load_texts,
    load_windows,
    prefix_tokens,
    read_text_file,
    text_prefix,
    token_windows,
    window_prefix,
    window_source,
)

__all__ = [
    "CORPORA",
    "corpus_windows",
    "load_texts",
    "load_windows",
    "prefix_tokens",
    "read_text_file",
    "text_prefix",
    "token_windows",
    "window_prefix",
    "window_source",
]
