"""Built-in registry entries: torchvision's builders, plus LeNet which torchvision lacks."""

from __future__ import annotations

from functools import partial

from torch import nn

from deploykit.errors import InputError
from deploykit.models.registry import ModelSpec, register_model

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
                         std=MNIST_STD, min_size=28, train_lr=5e-3, train_batch_size=32))

# name, family, crop, resize, min_size, extra builder kwargs, auxiliary-head prefixes
_TORCHVISION = [
    ("alexnet", "alexnet", 224, 256, 63, {}, ()),
    *[(f"vgg{d}{bn}", "vgg", 224, 256, 32, {}, ()) for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    *[(f"resnet{d}", "resnet", 224, 256, 32, {}, ()) for d in (18, 34, 50, 101, 152)],
    ("resnext50_32x4d", "resnext", 224, 256, 32, {}, ()),
    ("wide_resnet50_2", "wide_resnet", 224, 256, 32, {}, ()),
    ("googlenet", "googlenet", 224, 256, 32, {"aux_logits": False, "init_weights": True},
     ("aux1.", "aux2.")),
    ("inception_v3", "inception", 299, 342, 75, {"aux_logits": False, "init_weights": True}, ("AuxLogits.",)),
    *[(f"densenet{d}", "densenet", 224, 256, 32, {}, ()) for d in (121, 161, 169, 201)],
    ("mobilenet_v2", "mobilenet", 224, 256, 32, {}, ()),
    ("mobilenet_v3_small", "mobilenet", 224, 256, 32, {}, ()),
    ("mobilenet_v3_large", "mobilenet", 224, 256, 32, {}, ()),
    ("shufflenet_v2_x1_0", "shufflenet", 224, 256, 32, {}, ()),
    ("squeezenet1_1", "squeezenet", 224, 256, 35, {}, ()),
    ("efficientnet_b0", "efficientnet", 224, 256, 32, {}, ()),
    ("efficientnet_b1", "efficientnet", 240, 255, 32, {}, ()),
    ("efficientnet_b2", "efficientnet", 288, 288, 32, {}, ()),
    ("efficientnet_b3", "efficientnet", 300, 320, 32, {}, ()),
]

for _name, _family, _size, _resize, _min, _extra, _aux in _TORCHVISION:
    register_model(ModelSpec(_name, _family, partial(_torchvision, _name, **_extra), size=_size, resize=_resize,
                             min_size=_min, aux_prefixes=_aux))
