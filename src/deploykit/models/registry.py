"""The model zoo: one registry of architectures, torchvision's builders where they exist.

Modelled on torchvision's ``models/_api.py``: ``register_model`` rejects duplicates, ``get_spec`` /
``build_model`` / ``list_models``. Each entry knows its input size, channels and default normalisation.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from deploykit.errors import InputError
from deploykit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: Callable[..., object]  # builder(*, num_classes, in_channels) -> nn.Module
    channels: int = 3
    size: int = 224  # default crop (square)
    resize: int | None = 256  # shorter side before the crop; None = scale straight to size
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    min_size: int = 32  # smallest square input the architecture accepts (tests use it)
    # state_dict key prefixes that exist only in training (auxiliary heads); ignored when loading
    aux_prefixes: tuple[str, ...] = ()
    # `deploykit train` defaults where --lr / --batch-size are not given (AdamW, warm-up then cosine)
    train_lr: float = 1e-3
    train_batch_size: int = 64

    def preprocess(self) -> Preprocess:
        return Preprocess(channels=self.channels, height=self.size, width=self.size, mean=self.mean,
                          std=self.std, resize=self.resize)

    def build(self, num_classes: int, in_channels: int | None = None):
        return self.builder(num_classes=num_classes, in_channels=in_channels or self.channels)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _load_builtin()
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `deploykit models` for the list"
        raise InputError(f"unknown architecture {name!r}{hint}")
    return _REGISTRY[key]


def build_model(name: str, num_classes: int, in_channels: int | None = None):
    return get_spec(name).build(num_classes=num_classes, in_channels=in_channels)


_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from deploykit.models import zoo  # noqa: F401  (registers on import)
