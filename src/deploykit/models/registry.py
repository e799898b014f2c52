"""The model zoo: one registry of architectures, standing on torchvision's own registry.

Modelled on torchvision's ``models/_api.py``: ``register_model`` rejects duplicates, ``get_spec`` /
``build_model`` / ``list_models``. Each entry knows its input size, channels and default normalisation.
Every classifier torchvision registers is an entry (read from torchvision at run time, see ``zoo.py``); LeNet and
anything torchvision lacks are deploykit's. torchvision's entries are registered on first need, so a LeNet-only
run never imports torchvision.
"""

from __future__ import annotations

import difflib

from deploykit.errors import InputError
from deploykit.models.spec import ModelSpec, register_model, registered

__all__ = ["ModelSpec", "build_model", "get_spec", "list_models", "register_model"]


def list_models() -> list[str]:
    _load_builtin(everything=True)
    return sorted(registered())


def get_spec(name: str) -> ModelSpec:
    key = name.strip().lower().replace("-", "_")
    _load_builtin(everything=False)
    if key not in registered():
        _load_builtin(everything=True)
    if key not in registered():
        close = difflib.get_close_matches(key, list(registered()), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `deploykit models` for the list"
        raise InputError(f"unknown architecture {name!r}{hint}")
    return registered()[key]


def build_model(name: str, num_classes: int, in_channels: int | None = None):
    return get_spec(name).build(num_classes=num_classes, in_channels=in_channels)


_LOADED_TORCHVISION = False


def _load_builtin(everything: bool) -> None:
    global _LOADED_TORCHVISION
    from deploykit.models import zoo  # registers LeNet on import

    if everything and not _LOADED_TORCHVISION:
        _LOADED_TORCHVISION = True
        zoo.register_torchvision()
