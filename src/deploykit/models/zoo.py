"""Built-in registry entries: every classification model in torchvision's own registry, plus LeNet.

The torchvision entries are read from ``torchvision.models.list_models(module=torchvision.models)`` at run time,
not copied: a newer torchvision brings its new classifiers with it. Each entry's input size, resize, mean/std
and parameter count come from the metadata of its default weights (``get_model_weights(name).DEFAULT``);
the entries deploykit listed by hand before keep their sizes, families and builder options (``_CLASSIC``).
"""

from __future__ import annotations

from functools import partial

from torch import nn

from deploykit.errors import InputError
from deploykit.models.spec import ModelSpec, register_model

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


class LeNet(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, for 28x28 digits (MNIST style)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d((5, 5))  # identity at 28x28; lets other sizes through
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def _torchvision(name: str, *, num_classes: int, in_channels: int = 3, **extra):
    import torchvision

    if in_channels != 3:
        raise InputError(f"{name} takes 3-channel images; use --input-shape 3,H,W (grayscale is converted)")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)


def _lenet(*, num_classes: int, in_channels: int = 1):
    return LeNet(num_classes=num_classes, in_channels=in_channels)


# A net this small trains best with a higher rate and smaller batches: digits reach 99.7% in 10 epochs
# (1e-3 / 64 stays near 95.6%); see benchmarks/train_digits.py.
register_model(ModelSpec("lenet", "lenet", _lenet, channels=1, size=28, resize=None, mean=MNIST_MEAN,
                         std=MNIST_STD, min_size=28, train_lr=5e-3, train_batch_size=32, origin="deploykit"))

# The entries deploykit listed before the registry stood on torchvision's: their crop/resize (the IMAGENET1K_V1
# recipes for some, where DEFAULT is now V2), min_size, family names and builder options stay as they were.
# name: family, crop, resize, min_size, extra builder kwargs, auxiliary-head prefixes
_CLASSIC: dict[str, tuple] = {
    "alexnet": ("alexnet", 224, 256, 63, {}, ()),
    **{f"vgg{d}{bn}": ("vgg", 224, 256, 32, {}, ()) for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    **{f"resnet{d}": ("resnet", 224, 256, 32, {}, ()) for d in (18, 34, 50, 101, 152)},
    "resnext50_32x4d": ("resnext", 224, 256, 32, {}, ()),
    "wide_resnet50_2": ("wide_resnet", 224, 256, 32, {}, ()),
    "googlenet": ("googlenet", 224, 256, 32, {"aux_logits": False, "init_weights": True}, ("aux1.", "aux2.")),
    "inception_v3": ("inception", 299, 342, 75, {"aux_logits": False, "init_weights": True}, ("AuxLogits.",)),
    **{f"densenet{d}": ("densenet", 224, 256, 32, {}, ()) for d in (121, 161, 169, 201)},
    "mobilenet_v2": ("mobilenet", 224, 256, 32, {}, ()),
    "mobilenet_v3_small": ("mobilenet", 224, 256, 32, {}, ()),
    "mobilenet_v3_large": ("mobilenet", 224, 256, 32, {}, ()),
    "shufflenet_v2_x1_0": ("shufflenet", 224, 256, 32, {}, ()),
    "squeezenet1_1": ("squeezenet", 224, 256, 35, {}, ()),
    "efficientnet_b0": ("efficientnet", 224, 256, 32, {}, ()),
    "efficientnet_b1": ("efficientnet", 240, 255, 32, {}, ()),
    "efficientnet_b2": ("efficientnet", 288, 288, 32, {}, ()),
    "efficientnet_b3": ("efficientnet", 300, 320, 32, {}, ()),
}

# torchvision's module name -> deploykit's family name, where they differ (resnet.py also holds ResNeXt and
# Wide ResNet: those are told apart by name below)
_FAMILY = {"mobilenetv2": "mobilenet", "mobilenetv3": "mobilenet", "shufflenetv2": "shufflenet",
           "swin_transformer": "swin", "vision_transformer": "vit"}

# Smallest square input tried for an entry whose weights say "any size" (min_size 1x1): the spatial maps of
# these nets reach 1x1 at 32x32; the registry's `min_size` is what `train --img-size` and the tests use.
_FLOOR = 32


# ViT fixes its input size when built: `get_model("vit_h_14", weights=None)` is a 224x224 model (257 position
# embeddings) although its DEFAULT weights (SWAG, 518x518) build it at 518. Entries are built without weights,
# so they take the size their builder makes; a 518 SWAG checkpoint needs --model-def with image_size=518.
_BUILT_AT = {"vit_h_14": 224}


def _family(name: str, module: str) -> str:
    short = module.rsplit(".", 1)[-1]
    if short == "resnet":
        return "resnext" if name.startswith("resnext") else "wide_resnet" if name.startswith("wide_") else "resnet"
    return _FAMILY.get(short, short)


def register_torchvision() -> None:
    """Register every classifier of torchvision's registry (called once, by the registry, on first need)."""
    try:
        import torchvision
    except ImportError:  # deploykit still lists and builds its own entries (LeNet)
        return
    models = torchvision.models
    for name in models.list_models(module=models):
        builder = models.get_model_builder(name)
        weights = models.get_model_weights(name).DEFAULT
        meta = weights.meta
        num_params = meta.get("num_params")
        if name in _CLASSIC:
            family, size, resize, min_size, extra, aux = _CLASSIC[name]
            register_model(ModelSpec(name, family, partial(_torchvision, name, **extra), size=size, resize=resize,
                                     min_size=min_size, aux_prefixes=aux, origin="torchvision",
                                     num_params=num_params))
            continue
        transforms = weights.transforms()
        size, resize = int(transforms.crop_size[0]), int(transforms.resize_size[0])
        if name in _BUILT_AT:  # the weights-free model takes another size than the DEFAULT weights' recipe
            size = resize = _BUILT_AT[name]
        register_model(ModelSpec(
            name, _family(name, builder.__module__), partial(_torchvision, name), size=size, resize=resize,
            mean=tuple(float(v) for v in transforms.mean), std=tuple(float(v) for v in transforms.std),
            min_size=_BUILT_AT.get(name) or max(_FLOOR, *meta.get("min_size", (1, 1))), origin="torchvision",
            num_params=num_params))

