"""One loader for every corpus: documents (`load_texts`) and fixed-length token windows (`token_windows`).

Each document is tokenized on its own without special tokens (in one batched call), and the documents
are joined by the tokens of a blank line ("\\n\\n", the separator the paper's code uses for WikiText and
RedPajama). Each window starts the way the tokenizer starts a text: `text_prefix(tokenizer)` (the BOS of
LLaMA or Gemma; nothing for GPT-2, SmolLM2 or Qwen2.5) followed by `seq_len - len(prefix)` tokens of the
stream, so `seq_len` is the total length (`add_special_tokens=False` gives windows of text tokens only).
The stream is cut into non-overlapping chunks and `samples` of them are picked by a seeded permutation
(so a larger `samples` with the same seed extends a smaller one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from massact.defaults import DEFAULT_CORPUS as DEFAULT_CORPUS
from massact.errors import MassactError, install_hint
from massact.validate import at_least, given

JOIN = "\n\n"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise MassactError(
            f"this corpus is read with the `datasets` package: run `{install_hint('online')}`, "
            "or use `corpus='shakespeare'`"
        ) from None
    return datasets


def _hub(loader: Callable[[object], list[str]], name: str) -> Callable[[], list[str]]:
    def load() -> list[str]:
        datasets = _datasets()
        try:
            return loader(datasets)
        except MassactError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MassactError(
                f"could not load corpus {name!r} from the hub ({first}); offline? use `corpus='shakespeare'` "
                "or give `corpus` a path (.txt, folder of .txt, .jsonl)"
            ) from None

    return load


# The paper's choices (its released code): dataset, split and which documents.
def _wikitext(datasets) -> list[str]:
    return list(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])


def _c4(datasets) -> list[str]:
    return list(datasets.load_dataset("NeelNanda/c4-10k", split="train")[:5000]["text"])


def _pg19(datasets) -> list[str]:
    return list(datasets.load_dataset("emozilla/pg19", split="validation")[:5]["text"])


def _redpajama(datasets) -> list[str]:
    data = datasets.load_dataset("togethercomputer/RedPajama-Data-1T-Sample", split="train")
    picked = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:500].tolist()
    return [data[i]["text"] for i in picked]


def _shakespeare() -> list[str]:
    from massact.data.shakespeare import shakespeare_texts

    return shakespeare_texts()


CORPORA: dict[str, Callable[[], list[str]]] = {
    "shakespeare": _shakespeare,
    "wikitext": _hub(_wikitext, "wikitext"),
    "c4": _hub(_c4, "c4"),
    "pg19": _hub(_pg19, "pg19"),
    "redpajama": _hub(_redpajama, "redpajama"),
}


BOM = b"\xef\xbb\xbf"


def read_text_file(path: str | Path, option: str = "path") -> str:
    """A UTF-8 text file without its byte-order mark; an empty, missing or binary file -> one-line MassactError
    that names the file as the parameter `option` the caller gave it with."""
    path = Path(path).expanduser()
    named = given(option, str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MassactError(f"{named}: cannot read it ({reason}); give a readable text file") from None
    data = data.removeprefix(BOM)
    if not data.strip():
        raise MassactError(f"{named}: the file is empty; give a file with some text")
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MassactError(f"{named}: not UTF-8 text (binary file?); give a plain UTF-8 text file") from None


def _read_text_file(path: Path) -> str:
    return read_text_file(path, "corpus")


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(_read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise MassactError(
                f"`corpus={str(path)!r}`: line {number} is not JSON; give one JSON object per line"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise MassactError(f"`corpus={str(path)!r}`: line {number} has no string field 'text'")
        texts.append(row["text"])
    return texts


def _read_path(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise MassactError(f"`corpus={str(path)!r}`: the folder holds no .txt files")
        return [_read_text_file(p) for p in files]
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    return [_read_text_file(path)]


def load_texts(name_or_path: str = DEFAULT_CORPUS) -> list[str]:
    """The documents of a named corpus (see `CORPORA`), a .txt file, a folder of .txt files or a .jsonl file."""
    if name_or_path in CORPORA:
        texts = CORPORA[name_or_path]()
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            names = ", ".join(CORPORA)
            raise MassactError(
                f"`corpus={name_or_path!r}`: no such corpus or file; use one of {names}, "
                "a .txt file, a folder of .txt files or a .jsonl file with a 'text' field"
            )
        texts = _read_path(path)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise MassactError(f"`corpus={name_or_path!r}`: holds no text")
    return texts


@dataclass(frozen=True)
class CorpusInputs:
    """A corpus (a name or a path) an analysis draws windows from, and its documents (or windows) when at hand."""

    corpus: str = DEFAULT_CORPUS  # a corpus name or a path; names the windows in every result
    texts: list[str] | None = None  # the documents, when already read (None: read `corpus`)
    windows: torch.Tensor | None = None  # windows already cut [N, L]: scanned as they are, named by `corpus`

    def documents(self) -> list[str]:
        """The documents: those given, else read now."""
        return load_texts(self.corpus) if self.texts is None else self.texts

    @classmethod
    def read(cls, corpus: str) -> CorpusInputs:
        """Read the corpus now, so that a bad one fails before a model loads."""
        return cls(corpus, load_texts(corpus))


def _tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """All documents as one token stream, joined by the tokens of `JOIN`."""
    encoded = tokenizer([JOIN, *texts], add_special_tokens=False, verbose=False)["input_ids"]
    separator, documents = encoded[0], encoded[1:]
    stream: list[int] = []
    for index, ids in enumerate(documents):
        if index:
            stream.extend(separator)
        stream.extend(ids)
    return torch.tensor(stream, dtype=torch.long)


def text_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a plain text (its BOS; [] for GPT-2, SmolLM2, Qwen2.5).

    Found by comparing `tokenizer(text)` with `tokenizer(text, add_special_tokens=False)`: the prefix is
    what comes before the plain ids (anything after them, such as an EOS, is not a prefix).
    """
    if tokenizer is None:
        return []
    for probe in ("a", "Hello world"):
        full = list(tokenizer(probe)["input_ids"])
        plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        if not plain:
            continue
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
    # the text tokenizes differently with special tokens: the leading special tokens are the prefix
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    full = list(tokenizer("a")["input_ids"])
    count = 0
    while count < len(full) and full[count] in special:
        count += 1
    return full[:count]


def window_prefix(tokenizer, add_special_tokens: bool = True) -> list[int]:
    """The ids every window starts with: `text_prefix(tokenizer)`, or [] when `add_special_tokens` is False."""
    return text_prefix(tokenizer) if add_special_tokens else []


def prefix_tokens(tokenizer, add_special_tokens: bool = True) -> list[str]:
    """The window prefix as token strings (what JSON records as `"prefix_tokens"`; [] when none)."""
    ids = window_prefix(tokenizer, add_special_tokens)
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)] if ids else []


def window_source(corpus: str, seq_len: int, prefix: list[str] | tuple[str, ...] = ()) -> str:
    """Names where windows come from: the same name means the same stream, cut the same way.

    A window is identified by (this name, its stream index); runs without a prefix keep the plain name.
    """
    name = f"{corpus}|seq_len={seq_len}"
    return f"{name}|prefix={' '.join(prefix)}" if prefix else name


def corpus_windows(
    tokenizer, texts: list[str], samples: int, seq_len: int, seed: int = 0, add_special_tokens: bool = True
) -> tuple[torch.LongTensor, list[int]]:
    """`token_windows` plus each window's index in the token stream.

    With a prefix of P ids, window i holds the prefix and stream tokens [i*(L-P), (i+1)*(L-P)).
    """
    at_least("samples", samples)
    at_least("seq_len", seq_len)
    if tokenizer is None:
        raise MassactError("the model has no tokenizer, so it cannot read a text corpus")
    prefix = window_prefix(tokenizer, add_special_tokens)
    text_len = seq_len - len(prefix)
    why = f"each window starts with {len(prefix)} special token(s); or pass `add_special_tokens=False`"
    at_least("seq_len", seq_len, len(prefix) + 1, why)
    ids = _tokenize(tokenizer, texts)
    available = ids.numel() // text_len
    if available < samples:
        raise MassactError(
            f"the corpus has {ids.numel()} tokens, {available} windows of {seq_len}, fewer than `samples={samples}`; "
            "lower `samples` or `seq_len`, or use a larger corpus"
        )
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:samples]
    text = ids[: available * text_len].view(available, text_len)[order]
    if prefix:
        head = torch.tensor(prefix, dtype=torch.long).expand(samples, len(prefix))
        return torch.cat([head, text], dim=1), order.tolist()
    return text.clone(), order.tolist()


def token_windows(
    tokenizer, texts: list[str], samples: int, seq_len: int, seed: int = 0, add_special_tokens: bool = True
) -> torch.LongTensor:
    """`samples` non-overlapping windows of `seq_len` tokens, shape [samples, seq_len], picked by `seed`.

    Each starts with the tokenizer's text prefix (BOS) unless `add_special_tokens` is False.
    """
    return corpus_windows(tokenizer, texts, samples, seq_len, seed, add_special_tokens)[0]


def load_windows(
    tokenizer,
    corpus: str = DEFAULT_CORPUS,
    samples: int = 64,
    seq_len: int = 512,
    seed: int = 0,
    add_special_tokens: bool = True,
) -> torch.LongTensor:
    """`load_texts(corpus)` then `token_windows(...)`: the sequences a corpus scan runs."""
    return token_windows(tokenizer, load_texts(corpus), samples, seq_len, seed, add_special_tokens)
