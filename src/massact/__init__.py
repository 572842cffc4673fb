"""massact: find, measure, explain and neutralize massive activations in transformer models.

>>> from massact import load_model, scan
>>> result = scan(load_model("default"))          # bundled SmolLM2-135M-Instruct
>>> result.summary["dims"], result.summary["first_block"]
"""

from massact.capture.stats import capture_block_stats, summarize_hidden
from massact.detect import Thresholds
from massact.errors import MassactError
from massact.models.loading import LoadedModel, load_model
from massact.models.structure import Structure, find_structure
from massact.scan import ScanResult, scan
from massact.train import loader as _train_loader  # noqa: F401 (registers `massact train` checkpoints)

__version__ = "0.1.0"
__all__ = [
    "LoadedModel",
    "MassactError",
    "ScanResult",
    "Structure",
    "Thresholds",
    "capture_block_stats",
    "find_structure",
    "load_model",
    "scan",
    "summarize_hidden",
]
