"""Files other tools read: massive sites, per-channel activation scales, outlier tokens, an llm-compressor recipe.

    files = massact.export.run(loaded, "shakespeare", ExportConfig(formats=("sites", "recipe"), samples=8))
    files.to_json(); files.show(console); files.write(folder)

`measure_exports` measures windows already cut; the pass itself (`massact.corpus.measure`) is the one
quantization's calibration makes too. This package owns the files: their names and formats (`config`), the
result and its writer (`result`), `report.md` (`report`), the recipe and the importance matrix.
"""

from massact.data.corpus import CorpusInputs
from massact.export.config import FILES, FORMATS, ExportConfig, parse_formats
from massact.export.result import ExportFiles, ExportResult, read_export
from massact.export.run import measure_exports, run

__all__ = [
    "FILES",
    "FORMATS",
    "CorpusInputs",
    "ExportConfig",
    "ExportFiles",
    "ExportResult",
    "measure_exports",
    "parse_formats",
    "read_export",
    "run",
]
