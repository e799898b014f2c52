"""What a registry entry is (:class:`ModelSpec`) and how one is added (:func:`register_model`, duplicates
refused). The entries themselves come from ``zoo.py``; lookups from ``registry.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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
    origin: str = "deploykit"  # who provides the builder: "torchvision" or "deploykit"
    num_params: int | None = field(default=None, compare=False)  # at 1000 classes (torchvision's weights meta)

    def preprocess(self) -> Preprocess:
        return Preprocess(channels=self.channels, height=self.size, width=self.size, mean=self.mean,
                          std=self.std, resize=self.resize)

    def build(self, num_classes: int, in_channels: int | None = None):
        return self.builder(num_classes=num_classes, in_channels=in_channels or self.channels)

    def build_on_meta(self, num_classes: int = 1000, in_channels: int | None = None):
        """The model with every parameter and buffer on the meta device: shapes without memory or init time."""
        import torch

        try:
            with torch.device("meta"):
                return self.build(num_classes=num_classes, in_channels=in_channels)
        except (NotImplementedError, RuntimeError):  # builders that compute with tensors (RegNet's widths)
            with _params_on_meta():
                return self.build(num_classes=num_classes, in_channels=in_channels)

    def params(self) -> int:
        """Parameter count at 1000 classes: torchvision's figure where it has one, else counted on meta."""
        if self.num_params is not None:
            return int(self.num_params)
        if self.name not in _COUNTED:
            model = self.build_on_meta(1000 if self.channels == 3 else 10)
            _COUNTED[self.name] = int(sum(p.numel() for p in model.parameters()))
        return _COUNTED[self.name]


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Every parameter/buffer a module registers is moved to meta as it is registered (init then runs on meta)."""
    import torch
    from torch.nn.modules import module as nn_module

    def to_meta(_module, _name, tensor):
        if tensor is None:
            return None
        out = torch.empty_like(tensor, device="meta")
        return torch.nn.Parameter(out, tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) else out

    hooks = [nn_module.register_module_parameter_registration_hook(to_meta),
             nn_module.register_module_buffer_registration_hook(to_meta)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


_REGISTRY: dict[str, ModelSpec] = {}
_COUNTED: dict[str, int] = {}  # name -> parameter count counted on meta (entries without torchvision's figure)


def registered() -> Mapping[str, ModelSpec]:
    """The entries registered so far, by name (a read-only view: add with :func:`register_model`)."""
    return MappingProxyType(_REGISTRY)


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec
