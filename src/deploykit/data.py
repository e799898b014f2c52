"""Image folders, bundled sample photos, and labelled sets.

Nothing here downloads: the default photos are the ones scikit-image ships inside its wheel.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deploykit.errors import InputError
from deploykit.preprocess import Preprocess, open_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                  ".pnm", ".jp2", ".tga", ".ico"}

# Real photographs scikit-image ships in its wheel (no download); colour and grayscale, odd sizes included.
SKIMAGE_SAMPLES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                   "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "immunohistochemistry.png", "camera.png",
                   "coins.png", "moon.png", "page.png", "grass.png", "gravel.png", "brick.png", "horse.png",
                   "color.png", "logo.png", "motorcycle_right.png", "clock_motion.png", "cell.png")


@dataclass(frozen=True)
class ImageSet:
    """Image files, with integer labels when they came from an ImageFolder."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...] | None
    class_names: tuple[str, ...] | None
    source: str
    skipped: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, n: int, seed: int = 0) -> ImageSet:
        if n >= len(self.paths):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self.paths)), n))
        return ImageSet(tuple(self.paths[i] for i in idx),
                        None if self.labels is None else tuple(self.labels[i] for i in idx),
                        self.class_names, self.source, self.skipped)

    def load(self, preprocess: Preprocess) -> np.ndarray:
        return preprocess.batch(self.paths)


def _is_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.name.startswith(".") or path.suffix.lower() in {".txt", ".json", ".csv", ".md", ".onnx", ".pth"}:
        return False
    try:  # extension-less or unusual names: let Pillow decide
        with Image.open(path) as image:
            image.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def _readable(path: Path) -> bool:
    try:
        open_image(path)
        return True
    except InputError:
        return False


def scan_images(folder: Path, *, what: str = "--data", check: bool = True, warn=None) -> ImageSet:
    """Read an ImageFolder (``folder/<class>/*.jpg``) or a flat folder of images.

    Non-image files and unreadable images are skipped and reported through ``warn``.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"{what} must be a folder of images, got a file: {folder}")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped: list[Path] = []

    def collect(directory: Path, recursive: bool) -> list[Path]:
        files = sorted(p for p in (directory.rglob("*") if recursive else directory.iterdir()) if p.is_file())
        good = []
        for p in files:
            if _is_image(p) and (not check or _readable(p)):
                good.append(p)
            elif not p.name.startswith("."):
                skipped.append(p)
        return good

    flat = collect(folder, recursive=False)
    class_files = {d.name: collect(d, recursive=True) for d in subdirs}
    class_files = {k: v for k, v in class_files.items() if v}
    if class_files and not flat:
        names = tuple(sorted(class_files))
        paths, labels = [], []
        for label, name in enumerate(names):
            paths += class_files[name]
            labels += [label] * len(class_files[name])
        result = ImageSet(tuple(paths), tuple(labels), names, str(folder), tuple(skipped))
    else:
        paths = flat + [p for files in class_files.values() for p in files]
        result = ImageSet(tuple(paths), None, None, str(folder), tuple(skipped))
    if warn is not None and skipped:
        shown = ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warn(f"skipped {len(skipped)} file(s) that are not readable images in {folder}: {shown}")
    if not result.paths:
        raise InputError(f"no readable images in {what} folder {folder}; put .jpg/.png files in it "
                         "(flat, or one subfolder per class)")
    return result


def sample_images() -> ImageSet:
    """Real photos bundled with scikit-image: the default verification set."""
    try:
        import skimage.data
    except ImportError:
        raise InputError("the default verification photos come from scikit-image: pip install scikit-image, "
                         "or pass --data FOLDER") from None
    root = Path(skimage.data.__file__).parent
    paths = tuple(root / name for name in SKIMAGE_SAMPLES if (root / name).is_file())
    if not paths:
        raise InputError("scikit-image's sample photos are missing; pass --data FOLDER")
    return ImageSet(paths, None, None, "scikit-image sample photos")


def resolve_images(data: Path | None, *, warn=None) -> ImageSet:
    return sample_images() if data is None else scan_images(data, warn=warn)


