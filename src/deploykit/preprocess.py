"""Image preprocessing, in NumPy + Pillow only.

The same code prepares verification, calibration and inference inputs, on the workstation and on the
device (where torch is usually absent), so every artifact sees exactly the same pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deploykit.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
        if self.channels not in (1, 3):
            raise InputError(f"images have 1 or 3 channels, not {self.channels}; check --input-shape")
        if self.height < 1 or self.width < 1:
            raise InputError(f"input size {self.height}x{self.width} is not valid; check --input-shape")
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
        return cls(channels=int(data["channels"]), height=int(data["height"]), width=int(data["width"]),
                   mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
                   resize=None if data.get("resize") is None else int(data["resize"]),
                   interpolation=data.get("interpolation", "bilinear"), layout=data.get("layout", "NCHW"))

    def replace(self, **changes) -> Preprocess:
        data = self.to_dict()
        data.update(changes)
        return Preprocess.from_dict(data)

    # -- pixels -------------------------------------------------------------------------------------
    def apply(self, image: Image.Image) -> np.ndarray:
        image = to_mode(image, "L" if self.channels == 1 else "RGB")
        resample = _RESAMPLE[self.interpolation]
        if self.resize:
            w, h = image.size
            scale = self.resize / min(w, h)
            new = (max(self.width, round(w * scale)), max(self.height, round(h * scale)))
            image = image.resize(new, resample)
            left = (new[0] - self.width) // 2
            top = (new[1] - self.height) // 2
            image = image.crop((left, top, left + self.width, top + self.height))
        else:
            image = image.resize((self.width, self.height), resample)
        arr = np.asarray(image, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def load(self, path: Path) -> np.ndarray:
        return self.apply(open_image(path))

    def batch(self, paths: Sequence[Path]) -> np.ndarray:
        if not paths:
            raise InputError("no images to preprocess")
        return np.stack([self.load(p) for p in paths])


def open_image(path: Path) -> Image.Image:
    """Open any image Pillow reads (first frame of multi-frame files); raise InputError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.seek(0)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    return image


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
    if len(dims) != 3 or any(d < 1 for d in dims) or dims[0] not in (1, 3):
        raise InputError(f"--input-shape must be C,H,W with C = 1 or 3, e.g. 3,224,224 or 1,28,28; got {text!r}")
    return dims  # type: ignore[return-value]
