"""Text corpora for corpus-wide statistics: documents in, token windows out."""

from massact.data.corpus import CORPORA, corpus_windows, load_texts, load_windows, token_windows

__all__ = ["CORPORA", "corpus_windows", "load_texts", "load_windows", "token_windows"]
