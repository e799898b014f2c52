"""Image preprocessing, in NumPy + Pillow only.

The same code prepares verification, calibration and inference inputs, on the workstation and on the
device (where torch is usually absent), so every artifact sees exactly the same pixels.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deploykit.errors import InputError
from deploykit.text import printable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bounds checked before any allocation. An input side of 2048 is far beyond classifiers (ImageNet models run at
# 224-600); a resize of 4096 covers any crop ratio at that size. Images: 100 megapixels and 1:50 fit edge cameras
# comfortably (a 4K frame is 8.3 MP, 1:1.8); --max-image-pixels / DEPLOYKIT_MAX_IMAGE_PIXELS raise the first.
MAX_INPUT_SIDE = 2048
MAX_RESIZE = 4096
MAX_IMAGE_ASPECT = 50.0
MAX_BATCH_BYTES = 6 << 30
_LIMITS = {"max_pixels": 100_000_000}


def set_image_limits(*, max_pixels: int) -> None:
    if max_pixels < 1:
        raise InputError(f"--max-image-pixels must be >= 1, got {max_pixels}")
    _LIMITS["max_pixels"] = int(max_pixels)


def max_image_pixels() -> int:
    import os

    env = os.environ.get("DEPLOYKIT_MAX_IMAGE_PIXELS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise InputError(f"DEPLOYKIT_MAX_IMAGE_PIXELS must be a whole number, got {env!r}") from None
    return _LIMITS["max_pixels"]


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """How a file on disk becomes one ``C x H x W`` float32 input.

    1. convert to ``channels`` (1 = grayscale "L", 3 = "RGB"); 16-bit, palette and alpha images are converted;
    2. if ``resize`` is set, scale the shorter side to ``resize`` then center-crop ``height x width``;
       otherwise scale straight to ``height x width``;
    3. scale to [0, 1], subtract ``mean``, divide by ``std`` (per channel).
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    interpolation: str = "bilinear"
    layout: str = field(default="NCHW")

    def __post_init__(self) -> None:
        for name in ("channels", "height", "width", "resize"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"preprocessing {name} must be a whole number, got {value!r}")
        if self.channels not in (1, 3):
            raise InputError(f"images have 1 or 3 channels, not {self.channels}; check --input-shape")
        if self.height < 1 or self.width < 1:
            raise InputError(f"input size {self.height}x{self.width} is not valid; check --input-shape")
        if self.height > MAX_INPUT_SIDE or self.width > MAX_INPUT_SIDE:
            raise InputError(f"input size {self.height}x{self.width} is larger than {MAX_INPUT_SIDE} per side, "
                             "beyond any image classifier; check --input-shape / --img-size")
        if self.resize is not None and not 1 <= self.resize <= MAX_RESIZE:
            raise InputError(f"resize must be between 1 and {MAX_RESIZE} pixels (0 for none), got {self.resize}; "
                             "check --resize")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (*self.mean, *self.std)):
            raise InputError(f"--mean/--std must be finite numbers, got mean={list(self.mean)} std={list(self.std)}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise InputError(
                f"--mean/--std need {self.channels} value(s) for {self.channels}-channel input, "
                f"got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise InputError("--std values must be positive")
        if self.interpolation not in _RESAMPLE:
            raise InputError(f"interpolation must be one of {sorted(_RESAMPLE)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        """From a stored record (manifest, ONNX metadata, checkpoint); a malformed one is an InputError."""
        if not isinstance(data, dict):
            raise InputError(f"preprocessing must be an object, got {type(data).__name__}")

        def whole(key: str):
            value = data.get(key)
            if value is None and key == "resize":
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
                    or abs(value) > 1 << 31:
                raise InputError(f"preprocessing {key} must be a whole number, got {str(value)[:40]!r}")
            return int(value)

        def numbers(key: str) -> tuple[float, ...]:
            values = data.get(key)
            if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= 4 or \
                    any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                raise InputError(f"preprocessing {key} must be a list of 1-4 numbers, got {str(values)[:60]!r}")
            return tuple(float(v) for v in values)

        for key in ("channels", "height", "width", "mean", "std"):
            if key not in data:
                raise InputError(f"preprocessing has no {key!r}")
        interpolation, layout = data.get("interpolation", "bilinear"), data.get("layout", "NCHW")
        if layout != "NCHW" or not isinstance(interpolation, str):
            raise InputError(f"preprocessing layout must be NCHW and interpolation one of {sorted(_RESAMPLE)}")
        return cls(channels=whole("channels"), height=whole("height"), width=whole("width"),
                   mean=numbers("mean"), std=numbers("std"), resize=whole("resize") or None,
                   interpolation=interpolation, layout=layout)

    def replace(self, **changes) -> Preprocess:
        data = self.to_dict()
        data.update(changes)
        return Preprocess.from_dict(data)

    # -- pixels -------------------------------------------------------------------------------------
    def apply(self, image: Image.Image) -> np.ndarray:
        return self.normalize(self.pixels(image)[None])[0]

    def pixels(self, image: Image.Image) -> np.ndarray:
        """Steps 1-2: the ``H x W x C`` uint8 pixels the model sees, before scaling (what an export folder's
        evidence stores: :meth:`normalize` of them is exactly :meth:`apply`)."""
        image = to_mode(image, "L" if self.channels == 1 else "RGB")
        resample = _RESAMPLE[self.interpolation]
        if self.resize:
            w, h = image.size
            scale = self.resize / min(w, h)
            new = (max(self.width, round(w * scale)), max(self.height, round(h * scale)))
            if new[0] * new[1] > 2 * max_image_pixels():
                raise InputError(f"resizing a {w}x{h} image to a shorter side of {self.resize} needs "
                                 f"{new[0]}x{new[1]} pixels; crop the image or use a smaller --resize")
            image = image.resize(new, resample)
            left = (new[0] - self.width) // 2
            top = (new[1] - self.height) // 2
            image = image.crop((left, top, left + self.width, top + self.height))
        else:
            image = image.resize((self.width, self.height), resample)
        arr = np.asarray(image, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Step 3 on ``N x H x W x C`` uint8 pixels: the ``N x C x H x W`` float32 batch."""
        arr = np.asarray(pixels, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))

    def load(self, path: Path) -> np.ndarray:
        return self.apply(open_image(path))

    def batch(self, paths: Sequence[Path]) -> np.ndarray:
        self._check_batch(len(paths))
        return np.stack([self.load(p) for p in paths])

    def pixel_batch(self, paths: Sequence[Path]) -> np.ndarray:
        """:meth:`pixels` of each file: ``N x H x W x C`` uint8."""
        self._check_batch(len(paths))
        return np.stack([self.pixels(open_image(p)) for p in paths])

    def _check_batch(self, n: int) -> None:
        if not n:
            raise InputError("no images to preprocess")
        need = n * self.channels * self.height * self.width * 4
        if need > MAX_BATCH_BYTES:
            raise InputError(f"{n} images of {self.channels}x{self.height}x{self.width} need "
                             f"{need / 2**30:.1f} GiB as float32; use fewer images")


def open_image(path: Path) -> Image.Image:
    """Open any image Pillow reads (first frame of multi-frame files); raise InputError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_image_pixels()  # Pillow's own guard (an error at twice this) follows ours
            image = Image.open(path)
            check_image_size(image.size, path)  # from the header, before decoding a pixel
            image.seek(0)
            image.load()
    except Image.DecompressionBombError:
        raise InputError(f"image {path} claims over {2 * max_image_pixels() / 1e6:g} megapixels (a decompression "
                         "bomb?); if it is real, raise the limit with deploykit --max-image-pixels N") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InputError(f"cannot read image {path}: {printable(exc)[:200]}") from None
    except MemoryError:
        raise InputError(f"cannot read image {path}: not enough memory to decode it") from None
    return image


def check_image_size(size: tuple[int, int], path: Path) -> None:
    w, h = size
    limit = max_image_pixels()
    if w < 1 or h < 1:
        raise InputError(f"image {path} is empty ({w}x{h})")
    if w * h > limit:
        raise InputError(f"image {path} is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the {limit / 1e6:g} MP limit; "
                         "resize it, or raise the limit with deploykit --max-image-pixels N")
    if max(w, h) / min(w, h) > MAX_IMAGE_ASPECT:
        raise InputError(f"image {path} is {w}x{h}, an aspect ratio over 1:{MAX_IMAGE_ASPECT:g}; crop it to the "
                         "subject first")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert 16-bit, float, palette, alpha, CMYK and grayscale images to 8-bit ``L`` or ``RGB``."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image).astype(np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if image.mode == "F" and arr.max(initial=0) <= 1.0:
            hi = 1.0
        image = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # composite transparent pixels on white, as viewers show them
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != mode:
        image = image.convert(mode)
    return image


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, e.g. 0.5,0.5,0.5; got {text!r}") from None
    if not values:
        raise InputError(f"{what} is empty")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} must be finite numbers, got {text!r}")
    return values


def parse_input_shape(text: str | None) -> tuple[int, int, int] | None:
    """Parse ``C,H,W`` (e.g. ``1,28,28``)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or any(d < 1 for d in dims) or dims[0] not in (1, 3) or max(dims) > MAX_INPUT_SIDE:
        raise InputError(f"--input-shape must be C,H,W with C = 1 or 3, e.g. 3,224,224 or 1,28,28 (at most "
                         f"{MAX_INPUT_SIDE} per side); got {text!r}")
    return dims  # type: ignore[return-value]
