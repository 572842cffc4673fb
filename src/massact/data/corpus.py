"""One loader for every corpus: documents (`load_texts`) and fixed-length token windows (`token_windows`).

Each document is tokenized on its own without special tokens (in one batched call), and the documents
are joined by the tokens of a blank line ("\\n\\n", the separator the paper's code uses for WikiText and
RedPajama). The token stream is cut into non-overlapping windows of `seq_len` tokens, and
`samples` of those windows are picked by a seeded permutation (so a larger `samples` with the same
seed extends a smaller one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from massact.errors import MassactError

JOIN = "\n\n"
DEFAULT_CORPUS = "shakespeare"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise MassactError(
            "this corpus is read with the `datasets` package: `pip install datasets`, or use --corpus shakespeare"
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
                f"could not load corpus {name!r} from the hub ({first}); offline? use --corpus shakespeare "
                "or --corpus PATH (.txt, folder of .txt, .jsonl)"
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


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise MassactError(f"--corpus {path}: the file is empty; give a file with some text")
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MassactError(f"--corpus {path}: not UTF-8 text (binary file?); give plain .txt or .jsonl text") from None


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(_read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise MassactError(f"--corpus {path}: line {number} is not JSON; give one JSON object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise MassactError(f"--corpus {path}: line {number} has no string field 'text'")
        texts.append(row["text"])
    return texts


def _read_path(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise MassactError(f"--corpus {path}: the folder holds no .txt files")
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
                f"--corpus {name_or_path}: no such corpus or file; use one of {names}, "
                "a .txt file, a folder of .txt files or a .jsonl file with a 'text' field"
            )
        texts = _read_path(path)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise MassactError(f"--corpus {name_or_path}: holds no text")
    return texts


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


def corpus_windows(
    tokenizer, texts: list[str], samples: int, seq_len: int, seed: int = 0
) -> tuple[torch.LongTensor, list[int]]:
    """`token_windows` plus each window's index in the token stream (window i = tokens [i*L, (i+1)*L))."""
    if samples < 1:
        raise MassactError(f"--samples {samples}: must be at least 1")
    if seq_len < 1:
        raise MassactError(f"--seq-len {seq_len}: must be at least 1")
    if tokenizer is None:
        raise MassactError("the model has no tokenizer, so it cannot read a text corpus")
    ids = _tokenize(tokenizer, texts)
    available = ids.numel() // seq_len
    if available < samples:
        raise MassactError(
            f"the corpus has {ids.numel()} tokens, {available} windows of {seq_len}, fewer than --samples {samples}; "
            "lower --samples or --seq-len, or use a larger corpus"
        )
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:samples]
    return ids[: available * seq_len].view(available, seq_len)[order].clone(), order.tolist()


def token_windows(tokenizer, texts: list[str], samples: int, seq_len: int, seed: int = 0) -> torch.LongTensor:
    """`samples` non-overlapping windows of `seq_len` tokens, shape [samples, seq_len], picked by `seed`."""
    return corpus_windows(tokenizer, texts, samples, seq_len, seed)[0]


def load_windows(
    tokenizer, corpus: str = DEFAULT_CORPUS, samples: int = 64, seq_len: int = 512, seed: int = 0
) -> torch.LongTensor:
    """`load_texts(corpus)` then `token_windows(...)`: the sequences a corpus scan runs."""
    return token_windows(tokenizer, load_texts(corpus), samples, seq_len, seed)
