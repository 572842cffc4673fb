"""Vision transformers: image scans (CLS, register and patch tokens) and Fix-Reg-Mean.

`run(loaded, images, ImageScanConfig(...)) -> ImageScan`;
`run_fix_reg_mean(loaded, (mean_images, eval_images), FixRegMeanConfig(...)) -> FixRegMeanResult`.
"""

from massact.vision.config import FixRegMeanConfig, ImageScanConfig
from massact.vision.fix_reg_mean import FixRegMeanResult, fix_reg_mean
from massact.vision.fix_reg_mean import run as run_fix_reg_mean
from massact.vision.images import ImageSet, find_images
from massact.vision.scan import ImageScan, run

__all__ = [
    "FixRegMeanConfig",
    "FixRegMeanResult",
    "ImageScan",
    "ImageScanConfig",
    "ImageSet",
    "find_images",
    "fix_reg_mean",
    "run",
    "run_fix_reg_mean",
]
