"""`ExportConfig`: which files `massact export` writes and the windows it measures them on, checked when made."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from massact.detect import Thresholds
from massact.errors import MassactError
from massact.validate import at_least, given

IMATRIX_FILE = "imatrix.gguf"
FILES = {
    "sites": "sites.json",
    "act-scales": "act_scales.pt",
    "outlier-tokens": "outlier_tokens.json",
    "recipe": "recipe.yaml",
    "imatrix": IMATRIX_FILE,
}
FORMATS = tuple(name for name in FILES if name != "imatrix")  # what `all` writes


def parse_formats(values: Iterable[str]) -> list[str]:
    """`--format` values (repeated or comma-separated, `all` for every one) -> known format names."""
    chosen: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name == "all":
                chosen.extend(FORMATS)
            elif name in FILES:
                chosen.append(name)
            else:
                raise MassactError(
                    f"{given('formats', name)}: does not exist; use one or more of {', '.join(FILES)}, or all"
                )
    if not chosen:
        raise MassactError(f"`formats` is empty: give one or more of {', '.join(FILES)}, or all")
    return list(dict.fromkeys(chosen))


@dataclass(frozen=True)
class ExportConfig:
    """The formats (any of `FORMATS`, or `all`), the corpus windows and the criterion of one export."""

    formats: tuple[str, ...] = FORMATS  # any of `FORMATS`, `imatrix`, or `all`
    samples: int = 32  # corpus windows
    seq_len: int = 512  # tokens per window, the tokenizer's prefix (BOS) included
    batch_size: int = 4  # windows per forward pass
    seed: int = 0  # which windows are drawn
    thresholds: Thresholds = field(default_factory=Thresholds)  # the criterion that finds the massive sites
    add_special_tokens: bool = True  # windows start as the tokenizer starts a text (its BOS)
    blocks_path: str | None = None  # dotted path of the list of blocks, when not found by itself
    progress: bool = True  # a progress bar on a terminal

    def __post_init__(self) -> None:
        formats = (self.formats,) if isinstance(self.formats, str) else self.formats
        object.__setattr__(self, "formats", tuple(parse_formats(formats)))
        for name, value in (("samples", self.samples), ("seq_len", self.seq_len), ("batch_size", self.batch_size)):
            at_least(name, value)
        if not isinstance(self.thresholds, Thresholds):
            raise MassactError("thresholds must be a massact.detect.Thresholds")
