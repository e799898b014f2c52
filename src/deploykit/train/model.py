"""The model a run trains: a fresh registry architecture, or a ``--from`` checkpoint with its classifier head
replaced for the new classes (the generic head replacement: the last ``Linear`` / ``Conv2d``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploykit.errors import CheckpointError, InputError
from deploykit.models.identify import state_shapes
from deploykit.models.loading import LoadOptions, load_model
from deploykit.models.registry import ModelSpec
from deploykit.train.config import TrainConfig


def find_head(module) -> tuple[str, Any]:
    """The classifier layer: the last ``nn.Linear`` / ``nn.Conv2d`` registered in the module.

    Every zoo architecture registers its classifier last (``fc``, ``classifier[-1]``, SqueezeNet's 1x1
    ``classifier[1]`` conv, ...); ``replace_head`` checks the model's output really comes from it.
    """
    from torch import nn

    head = None
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            head = (name, layer)
    if head is None:
        raise CheckpointError("found no Linear or Conv2d classifier layer in the model to fine-tune")
    return head


def _out_features(layer) -> int:
    return int(layer.out_features if hasattr(layer, "out_features") else layer.out_channels)


def replace_head(module, num_classes: int) -> str:
    """Give ``module`` a freshly initialised classifier with ``num_classes`` outputs; return its name."""
    from torch import nn

    name, old = find_head(module)
    if _out_features(old) == num_classes:
        return name
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    else:
        if old.groups != 1:
            raise CheckpointError(f"the last conv layer {name} is grouped; cannot use it as the classifier head")
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode, **factory)
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)
    return name


def load_pretrained(config: TrainConfig, spec: ModelSpec):
    """``--from CKPT`` through the loader (any kind it understands), read as ``spec``'s architecture."""
    return load_model(Path(config.from_ckpt), LoadOptions(arch=spec.name, allow_pickle=config.allow_pickle))


def model_for_training(config: TrainConfig, spec: ModelSpec, num_classes: int, channels: int, loaded,
                       notes: list[str]):
    """A fresh ``spec`` model, or the ``--from`` model (``loaded``) with its head replaced for ``num_classes``."""
    import torch

    torch.manual_seed(config.seed)
    if loaded is None:
        model = spec.build(num_classes=num_classes, in_channels=channels)
        return model, find_head(model)[0]
    module = loaded.module
    if not isinstance(module, torch.nn.Module) or isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        raise InputError(f"--from {config.from_ckpt} is a {loaded.kind} archive, which cannot be fine-tuned; "
                         "give its weights as a state_dict or deploykit checkpoint")
    head = replace_head(module, num_classes)
    reference = spec.build_on_meta(num_classes, in_channels=loaded.preprocess.channels)
    if state_shapes(module.state_dict()) != state_shapes(reference.state_dict()):
        raise CheckpointError(f"--from {config.from_ckpt} is not a {spec.name} (its layers differ), so the result "
                              f"could not be reloaded as {spec.name}; pass the matching ARCH")
    if loaded.num_classes != num_classes:
        notes.append(f"replaced the {loaded.num_classes}-class head {head} of {Path(config.from_ckpt).name} with a "
                     f"new {num_classes}-class one")
    return module, head
