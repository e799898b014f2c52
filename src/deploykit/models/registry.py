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
        close = close_names(key, list(registered()))
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `deploykit models` for the list"
        raise InputError(f"unknown architecture {name!r}{hint}")
    return registered()[key]


def close_names(key: str, names: list[str], n: int = 3) -> list[str]:
    """The ``n`` names most like ``key`` (difflib's ratio, at least 0.5); among equally close ones, the one whose
    number is nearest first: ``resnet35`` -> resnet34 before resnet50 (difflib alone breaks ties by name,
    backwards)."""
    import re

    def number(text: str) -> float | None:
        found = re.findall(r"\d+", text)
        return float(found[-1]) if found else None

    wanted = number(key)
    scored = []
    for name in names:
        ratio = difflib.SequenceMatcher(None, key, name).ratio()
        if ratio >= 0.5:
            got = number(name)
            gap = abs(got - wanted) if wanted is not None and got is not None else float("inf")
            scored.append((-round(ratio, 6), gap, name))
    return [name for *_, name in sorted(scored)[:n]]


def build_model(name: str, num_classes: int, in_channels: int | None = None):
    return get_spec(name).build(num_classes=num_classes, in_channels=in_channels)


_LOADED_TORCHVISION = False


def _load_builtin(everything: bool) -> None:
    global _LOADED_TORCHVISION
    from deploykit.models import zoo  # registers LeNet on import

    if everything and not _LOADED_TORCHVISION:
        _LOADED_TORCHVISION = True
        zoo.register_torchvision()
