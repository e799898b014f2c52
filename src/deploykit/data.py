"""Image folders, bundled sample photos, and labelled sets.

Nothing here downloads: the default photos are the ones scikit-image ships inside its wheel.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deploykit.errors import InputError
from deploykit.files import atomic_path, ensure_writable_dir
from deploykit.preprocess import Preprocess, open_image
from deploykit.messages import SILENT, Reporter

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

    def subset(self, indices: Sequence[int]) -> ImageSet:
        """These images at ``indices``, in that order."""
        return ImageSet(tuple(self.paths[i] for i in indices),
                        None if self.labels is None else tuple(self.labels[i] for i in indices),
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
    except Image.DecompressionBombError:
        return True  # an image, but one Pillow refuses: the scan skips it with the others it cannot read
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return False


def _readable(path: Path) -> bool:
    try:
        open_image(path)
        return True
    except InputError:
        return False


def scan_images(folder: Path, *, what: str = "--data", check: bool = True,
                reporter: Reporter = SILENT) -> ImageSet:
    """Read an ImageFolder (``folder/<class>/*.jpg``) or a flat folder of images.

    Non-image files and unreadable images are skipped and reported as a warning on ``reporter``.
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
    if skipped:
        shown = ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        reporter.warn(f"skipped {len(skipped)} file(s) that are not readable images in {folder}: {shown}")
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


# The default verification set: deterministic views of the sample photos -- whole, flipped, corner and centre
# crops at three scales -- so a verdict without --data rests on 200+ images, not 22. (scale, x, y, mirrored): the
# crop is ``scale`` of each side, its top-left at ``x``/``y`` of the room left.
PHOTO_VIEWS = ((1.0, .5, .5, False), (1.0, .5, .5, True), (.6, 0., 0., False), (.6, 1., 0., False),
               (.6, 0., 1., False), (.6, 1., 1., False), (.6, .5, .5, False), (.8, .5, .5, True),
               (.45, .5, .5, False), (.45, .3, .6, True))
VIEW_MAX_SIDE = 384  # views are stored at most this large: every model resizes them anyway


def photo_views() -> ImageSet:
    """The default verification images: :data:`PHOTO_VIEWS` of each scikit-image sample photo, written once per
    process as PNG files into a temporary folder removed at exit (a user's own images are better: --data)."""
    return _photo_views(sample_images().paths)


@lru_cache(maxsize=None)
def _photo_views(photos: tuple[Path, ...]) -> ImageSet:
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="deploykit-photo-views-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths = []
    for photo in photos:
        with Image.open(photo) as img:
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            w, h = img.size
            for k, (scale, fx, fy, mirror) in enumerate(PHOTO_VIEWS):
                cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
                left, top = round((w - cw) * fx), round((h - ch) * fy)
                view = img.crop((left, top, left + cw, top + ch))
                if mirror:
                    view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                view.thumbnail((VIEW_MAX_SIDE, VIEW_MAX_SIDE), Image.Resampling.BILINEAR)
                path = folder / f"{photo.stem}-{k}.png"
                view.save(path, compress_level=1)
                paths.append(path)
    return ImageSet(tuple(paths), None, None,
                    f"{len(paths)} views (crops, flips) of the {len(photos)} scikit-image sample photos")


def resolve_images(data: Path | str | None, *, reporter: Reporter = SILENT, split: str = "val",
                   what: str = "--data") -> ImageSet:
    """Images for verification or calibration: the bundled sample photos when ``data`` is None, a bundled dataset
    by name (``digits``: its ``split``, labelled; ``train`` for calibration, ``val`` -- the held-out images train
    and eval use -- for verification), or a folder. An existing folder wins over a bundled name."""
    if data is None:
        return photo_views()
    name = _bundled_name(data)
    if name is not None:
        return bundled_images(name, Split(split), what=what)
    return scan_images(Path(data), what=what, reporter=reporter)


def verification_set(data: Path | str | None, *, reporter: Reporter = SILENT, max_images: int = 256) -> ImageSet:
    """The images verification runs on: a seeded sample of at most ``max_images``, except that a bundled
    held-out split of up to ``WHOLE_SPLIT_MAX`` images (digits: 360) is used whole, so its accuracy is the one
    ``train`` and ``eval`` report."""
    images = resolve_images(data, reporter=reporter)
    if _bundled_name(data) is not None and len(images) <= WHOLE_SPLIT_MAX:
        return images
    return images.sample(max_images)


def _bundled_name(data: Path | str | None) -> Bundled | None:
    if data is None or Path(data).exists():
        return None
    return bundled(data)


def bundled_images(name: Bundled, split: Split, *, what: str = "--data") -> ImageSet:
    """A bundled dataset's split as PNG files (lossless: the pixels train and eval see), written once per process
    into a temporary folder that is removed at exit."""
    if name is not Bundled.digits:
        raise InputError(f"{what} {name.value} needs its files: write them as an ImageFolder with `deploykit data "
                         f"{name.value} --split {Split(split).value} --data-root DIR --out FOLDER` and pass "
                         f"{what} FOLDER")
    return _bundled_folder(name, Split(split))


@lru_cache(maxsize=None)
def _bundled_folder(name: Bundled, split: Split) -> ImageSet:
    import atexit
    import shutil
    import tempfile

    items = bundled_split(name, split)
    folder = Path(tempfile.mkdtemp(prefix=f"deploykit-{name.value}-{split.value}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    written = write_imagefolder(items, folder)
    return ImageSet(written.paths, written.labels, written.class_names, items.source)


# -- training data: bundled datasets, train/val splits, PNG export ---------------------------------
# Torch-free like the rest of this module: images come back as PIL images or paths; deploykit.train wraps them.


class Bundled(str, Enum):
    """Datasets ``--data`` accepts by name. ``digits`` ships inside scikit-learn; the torchvision ones are read
    from ``--data-root`` when their files are already there (never downloaded)."""

    digits = "digits"
    mnist = "mnist"
    fashionmnist = "fashionmnist"
    cifar10 = "cifar10"


class Split(str, Enum):
    """``val`` is the held-out split: never trained on; ``deploykit train`` validates on it."""

    train = "train"
    val = "val"


DIGITS_CLASSES = tuple(str(i) for i in range(10))
DIGITS_HELD_OUT = 0.2  # fixed, stratified, seed 0: the same 360 images for train's validation and eval
WHOLE_SPLIT_MAX = 1024  # verification uses a bundled held-out split whole up to this many images
_VAL_FOLDERS = ("val", "valid", "validation", "test")
# torchvision class, the folder it reads under --data-root, and what must be there
_TORCHVISION = {
    Bundled.mnist: ("MNIST", "MNIST/raw/", "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or the .gz files)"),
    Bundled.fashionmnist: ("FashionMNIST", "FashionMNIST/raw/", "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                           "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or the .gz files)"),
    Bundled.cifar10: ("CIFAR10", "cifar-10-batches-py/", "data_batch_1..5, test_batch, batches.meta "
                      "(unpacked cifar-10-python.tar.gz)"),
}


def bundled(value: str | Path | None) -> Bundled | None:
    """``--data digits`` names a bundled dataset; ``./digits`` (anything with a separator) is a folder."""
    if value is None:
        return None
    text = str(value)
    if "/" in text or "\\" in text:
        return None
    try:
        return Bundled(text.strip().lower().replace("-", "").replace("_", ""))
    except ValueError:
        return None


@dataclass(frozen=True)
class LabelledImages:
    """Labelled in-memory images: ``images[i]`` is a PIL image (or something ``Image.fromarray`` takes)."""

    images: Sequence
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        item = self.images[i]
        return item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item))


def digits_split(split: Split) -> LabelledImages:
    """scikit-learn's 8x8 digits (1797 images, shipped in its wheel) as 8-bit grayscale; a fixed split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    index = np.arange(len(images))
    train_idx, val_idx = train_test_split(index, test_size=DIGITS_HELD_OUT, random_state=0, stratify=digits.target)
    idx = np.sort(train_idx if Split(split) is Split.train else val_idx)
    return LabelledImages(images[idx], tuple(int(t) for t in digits.target[idx]), DIGITS_CLASSES,
                          f"scikit-learn digits ({Split(split).value} split)")


def torchvision_split(name: Bundled, root: Path | None, split: Split) -> LabelledImages:
    """MNIST / FashionMNIST / CIFAR10 from files already under ``root``; ``val`` is the official test set."""
    cls_name, folder, files = _TORCHVISION[name]
    if root is None:
        raise InputError(f"--data {name.value} reads its files from --data-root DIR (deploykit never downloads): "
                         f"put {files} in DIR/{folder}")
    root = Path(root)
    import torchvision.datasets

    try:
        ds = getattr(torchvision.datasets, cls_name)(str(root), train=Split(split) is Split.train, download=False)
    except RuntimeError:
        raise InputError(f"{name.value} files not found under --data-root {root}: put {files} in "
                         f"{root / folder} (deploykit never downloads)") from None
    targets = ds.targets.tolist() if hasattr(ds.targets, "tolist") else list(ds.targets)
    images = ds.data.numpy() if hasattr(ds.data, "numpy") else ds.data  # N x H x W (uint8) or N x H x W x 3
    return LabelledImages(images, tuple(int(t) for t in targets), tuple(str(c) for c in ds.classes),
                          f"{cls_name} ({'train' if Split(split) is Split.train else 'test'} set, {root})")


def bundled_split(name: Bundled, split: Split, *, data_root: Path | None = None) -> LabelledImages:
    return digits_split(split) if name is Bundled.digits else torchvision_split(name, data_root, split)


def val_folder(folder: Path) -> Path | None:
    for name in _VAL_FOLDERS:
        if (folder / name).is_dir():
            return folder / name
    return None


def split_imagefolder(folder: Path, *, val_split: float | None, seed: int,
                      reporter: Reporter = SILENT) -> tuple[ImageSet, ImageSet]:
    """``folder/train`` + ``folder/val`` (or valid/validation/test), or one ImageFolder split per class.

    The split is stratified and depends only on ``seed`` and the file list, so a run can be repeated.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--data folder not found: {folder} (or use a bundled dataset: "
                         f"{', '.join(b.value for b in Bundled)})")
    val_dir = val_folder(folder)
    if (folder / "train").is_dir() and val_dir is not None:
        if val_split is not None:
            raise InputError(f"--val-split does not apply: {folder} already has train/ and {val_dir.name}/ folders")
        train = _labelled(scan_images(folder / "train", reporter=reporter), folder / "train")
        val = _labelled(scan_images(val_dir, reporter=reporter), val_dir, min_classes=1)
        unknown = sorted(set(val.class_names) - set(train.class_names))
        if unknown:
            raise InputError(f"{val_dir} has classes that {folder / 'train'} lacks: {', '.join(unknown[:5])}")
        if val.class_names != train.class_names:  # val may lack a class: relabel onto the train classes
            index = {n: i for i, n in enumerate(train.class_names)}
            val = ImageSet(val.paths, tuple(index[val.class_names[label]] for label in val.labels),
                           train.class_names, val.source, val.skipped)
        return train, val
    whole = _labelled(scan_images(folder, reporter=reporter), folder)
    fraction = 0.2 if val_split is None else val_split
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--val-split must be between 0 and 1 (exclusive), got {fraction}")
    rng = random.Random(seed)
    train_idx, val_idx = [], []
    for label in range(len(whole.class_names)):
        members = [i for i, y in enumerate(whole.labels) if y == label]
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
        val_idx += members[:n_val]
        train_idx += members[n_val:]
    if not val_idx:
        raise InputError(f"{folder} is too small to hold out a validation split; add images or give train/ and val/")

    def subset(idx: list[int], what: str) -> ImageSet:
        idx = sorted(idx)
        return ImageSet(tuple(whole.paths[i] for i in idx), tuple(whole.labels[i] for i in idx),
                        whole.class_names, f"{folder} ({what} split {1 - fraction:.0%}/{fraction:.0%}, seed {seed})")

    return subset(train_idx, "train"), subset(val_idx, "val")


def _labelled(images: ImageSet, folder: Path, min_classes: int = 2) -> ImageSet:
    if images.labels is None or images.class_names is None:
        raise InputError(f"{folder} has no class subfolders; training needs an ImageFolder: "
                         f"{folder}/<class name>/*.jpg (one subfolder per class)")
    if len(images.class_names) < min_classes:
        raise InputError(f"{folder} has one class folder ({images.class_names[0]}); training needs at least two")
    return images


def write_imagefolder(data: LabelledImages, out: Path) -> ImageSet:
    """Write ``data`` as PNGs in ``out/<class>/<index>.png`` (lossless: the same pixels as in memory)."""
    out = ensure_writable_dir(Path(out), flag="--out")
    width = len(str(max(len(data) - 1, 1)))
    for name in data.class_names:
        ensure_writable_dir(out / name)
    for i, label in enumerate(data.labels):
        dest = out / data.class_names[label] / f"{i:0{width}d}.png"
        with atomic_path(dest) as tmp:
            data.image(i).save(tmp, format="PNG")
    return scan_images(out, check=False)
