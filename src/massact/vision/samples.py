"""`massact vit samples`: a labelled image folder cut from the photos bundled with scikit-image."""

from __future__ import annotations

from pathlib import Path

from massact.errors import MassactError
from massact.outputs import check_output_dir, staged_output
from massact.validate import given
from massact.vision.images import write_sample_folder


def write_samples(out: Path, crops: int = 6) -> dict:
    """Write the folder into `out` (new or empty; all files or none) and say what it holds, as JSON."""
    out = Path(out)
    check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise MassactError(f"{given('out', str(out))}: folder is not empty; give a new folder")
    with staged_output(out) as staging:
        image_set = write_sample_folder(staging, crops=crops)
        files = sorted(str(p.relative_to(staging)) for p in image_set.paths)
    return {"out": str(out), "classes": image_set.classes, "images": files}
