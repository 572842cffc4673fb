"""Files other tools read: massive sites, per-channel activation scales, outlier tokens, an llm-compressor recipe.

    files = massact.export.run(loaded, "shakespeare", ExportConfig(formats=("sites", "recipe"), samples=8))
    files.to_json(); files.show(console); files.write(folder)

The measurement itself (`measure_exports`, one pass over windows already cut) lives in `massact.quant.export`,
which quantization's calibration shares.
"""

from massact.data.corpus import CorpusInputs
from massact.export.config import ExportConfig
from massact.export.run import run
from massact.quant.export import FILES, FORMATS, ExportFiles, ExportResult, measure_exports, parse_formats, read_export

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
