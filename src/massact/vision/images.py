"""Images from a file, a folder, or a labelled folder (one sub-folder per class)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from massact.errors import MassactError, install_hint
from massact.validate import given

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field", "retina", "horse")
SAMPLES = "samples"  # images "samples": the photos bundled with scikit-image


@dataclass
class ImageSet:
    """Image files in a fixed order, with a class label per image when the folder has class sub-folders."""

    paths: list[Path]
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def label_names(self) -> list[str | None]:
        return [self.classes[i] for i in self.labels] if self.labels is not None else [None] * len(self.paths)

    def take(self, n: int | None) -> ImageSet:
        """The first `n` images (all when `n` is None)."""
        if n is None or n >= len(self.paths):
            return self
        return ImageSet(self.paths[:n], None if self.labels is None else self.labels[:n], self.classes)

    def spread(self, n: int | None) -> ImageSet:
        """Up to `n` images taken round-robin over the classes, so every class is represented."""
        if n is None or n >= len(self.paths) or self.labels is None:
            return self.take(n)
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(self.labels):
            by_class.setdefault(label, []).append(index)
        order = [
            group[i] for i in range(max(map(len, by_class.values()))) for group in by_class.values() if i < len(group)
        ]
        chosen = sorted(order[:n])
        return ImageSet([self.paths[i] for i in chosen], [self.labels[i] for i in chosen], self.classes)


def sample_photo_paths() -> list[Path]:
    """The real photos that ship inside the scikit-image wheel (no download)."""
    try:
        import skimage.data
    except ImportError:
        raise MassactError(
            f"the sample photos ship with scikit-image, which is not installed: run `{install_hint('vision')}`"
        ) from None
    root = Path(skimage.data.__file__).parent
    paths = [p for name in SAMPLE_PHOTOS for p in sorted(root.glob(f"{name}.*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise MassactError(
            f"scikit-image ships none of its sample photos here; reinstall it: `{install_hint('vision')}`"
        )
    return paths


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_images(source: str | Path, option: str = "images") -> ImageSet:
    """`source`: an image file, a folder of images, a folder of class folders, or 'samples'.

    `option` is the parameter errors name (`images`, `eval_images`).
    """
    if str(source) == SAMPLES and not Path(source).exists():
        return ImageSet(sample_photo_paths())
    path = Path(source).expanduser()
    if not path.exists():
        raise MassactError(
            f"{given(option, str(source))}: no such file or folder; give an image, a folder of images or 'samples'"
        )
    if path.is_file():
        return ImageSet([path])
    files = _image_files(path)
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not files and class_dirs:
        paths, labels, classes = [], [], []
        for folder in class_dirs:
            found = _image_files(folder)
            if found:
                labels += [len(classes)] * len(found)
                classes.append(folder.name)
                paths += found
        if paths:
            return ImageSet(paths, labels, classes)
    if not files:
        suffixes = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise MassactError(
            f"{given(option, str(source))}: no image files ({suffixes}) in this folder or its class sub-folders"
        )
    return ImageSet(files)


def open_image(path: Path) -> Image.Image:
    """The image at `path` as RGB, or a one-line error when it is not an image."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        reason = "not an image file" if isinstance(exc, UnidentifiedImageError) else f"unreadable ({exc})"
        raise MassactError(f"{path}: {reason}; give PNG, JPEG or another format Pillow reads") from None


def write_sample_folder(out: Path, crops: int = 6, size: int = 256) -> ImageSet:
    """A labelled folder from the bundled photos: one class per photo, `crops` random crops each (seeded)."""
    import random

    rng = random.Random(0)
    for path in sample_photo_paths():
        image = open_image(path)
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        w, h = image.size
        for index in range(crops):
            side = int(min(w, h) * rng.uniform(0.55, 0.9))
            left, top = rng.randint(0, w - side), rng.randint(0, h - side)
            crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{index:02d}.png")
    return find_images(out)
