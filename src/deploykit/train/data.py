"""The images a run trains and validates on: a bundled dataset (its fixed splits, preprocessed once in memory
when small) or an ImageFolder (train/ + val/, or split by ``--val-split``), with the augmentation each gets.

Validation images go through exactly the preprocessing stored in the checkpoint (``deploykit.preprocess``), so the
validation accuracy of a run is the accuracy ``deploykit eval`` / ``verify --data`` measure on the same images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.data import Bundled, ImageSet, LabelledImages, Split, bundled, bundled_split, split_imagefolder
from deploykit.errors import InputError
from deploykit.models.registry import ModelSpec
from deploykit.preprocess import Preprocess, open_image, to_mode
from deploykit.messages import Reporter
from deploykit.train.config import TrainConfig

IN_MEMORY_BYTES = 512 << 20  # bundled datasets are preprocessed once when they fit in this much memory


@dataclass
class TrainData:
    train: Any  # torch Dataset of (float32 C x H x W tensor, int label)
    val: Any
    train_labels: list[int]
    class_names: list[str]
    preprocess: Preprocess
    source: str
    in_memory: bool
    grayscale_to_rgb: bool = False  # grayscale images converted to colour for a 3-channel model


GRAYSCALE_BUNDLED = ("digits", "mnist", "fashionmnist")


def _mostly_grayscale(paths, limit: int = 64) -> bool:
    sample = list(paths)[:limit]
    gray = sum(1 for p in sample if open_image(p).mode in {"1", "L", "LA", "I", "I;16", "F"})
    return bool(sample) and gray * 2 > len(sample)


def trained_on_grayscale(meta: dict[str, Any]) -> bool:
    """Whether a deploykit checkpoint's model (3-channel) was trained on grayscale images converted to colour: its
    ``grayscale_to_rgb`` record, or for checkpoints written before it, a bundled grayscale dataset as ``--data``."""
    if "grayscale_to_rgb" in meta:
        return bool(meta["grayscale_to_rgb"])
    data = (meta.get("train_args") or {}).get("data")
    return (meta.get("preprocess") or {}).get("channels") == 3 and str(data).lower() in GRAYSCALE_BUNDLED


def preprocess_for(spec: ModelSpec, img_size: int | None, *, base: Preprocess | None = None,
                   full_frame: bool) -> Preprocess:
    """The arch's preprocessing at ``img_size``; ``full_frame`` data (digits, MNIST, CIFAR) is scaled, not cropped."""
    pre = base or spec.preprocess()
    if img_size is not None and (img_size, img_size) != (pre.height, pre.width):
        resize = None if pre.resize is None else round(img_size * pre.resize / pre.height)
        pre = pre.replace(height=img_size, width=img_size, resize=resize)
    if full_frame and pre.resize is not None:
        pre = pre.replace(resize=None)
    return pre


class _Images:
    """torch Dataset over labelled in-memory images or image files, each through ``transform(PIL) -> CHW``."""

    def __init__(self, items: LabelledImages | ImageSet, transform: Callable) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        image = self.items.image(i) if isinstance(self.items, LabelledImages) else open_image(self.items.paths[i])
        return torch.as_tensor(np.asarray(self.transform(image), dtype=np.float32)), int(self.items.labels[i])


def _materialize(items: LabelledImages, pre: Preprocess):
    """Preprocess every image once: bundled datasets have no augmentation, so epochs reuse the tensors."""
    import torch
    from torch.utils.data import TensorDataset

    x = torch.from_numpy(np.stack([pre.apply(items.image(i)) for i in range(len(items))]))
    return TensorDataset(x, torch.tensor(items.labels, dtype=torch.long))


class _Augmented:
    """Applies ``transform`` to the (preprocessed) tensors of another dataset: bundled data in memory."""

    def __init__(self, dataset, transform: Callable) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return self.transform(x), y


def _jitter(pre: Preprocess) -> Callable:
    """Bundled digits/MNIST/CIFAR: small random shifts, rotations and zooms (no flips: digits are not symmetric).

    Applied to normalised tensors, so the border is filled with the normalised value of a black pixel.
    """
    from torchvision.transforms import v2

    fill = [float(-m / s) for m, s in zip(pre.mean, pre.std)]
    return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=fill)


def _augment(pre: Preprocess) -> Callable:
    """Photo folders: random-resized crop + horizontal flip (torchvision v2), then the checkpoint's normalisation."""
    import torch
    from torchvision.transforms import v2

    pipeline = v2.Compose([
        v2.RandomResizedCrop((pre.height, pre.width), scale=(0.5, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ])
    return _Then(partial(to_mode, mode="L" if pre.channels == 1 else "RGB"), pipeline)


class _Then:
    """``second(first(x))``; picklable, for DataLoader workers started with spawn."""

    def __init__(self, first: Callable, second: Callable) -> None:
        self.first, self.second = first, second

    def __call__(self, x):
        return self.second(self.first(x))


def load_data(config: TrainConfig, spec: ModelSpec, base: Preprocess | None = None, *,
              reporter: Reporter | None = None) -> TrainData:
    """The run's training and validation sets, preprocessed as ``spec`` (or ``base``, a ``--from`` model's) at
    ``--img-size``; skipped unreadable files are reported as warnings."""
    import torch

    name = bundled(config.data)
    if name is not None:
        if config.val_split is not None:
            raise InputError(f"--val-split does not apply to --data {name.value}: its held-out split is fixed "
                             "(`deploykit data` writes it), so every run validates on the same images")
        pre = preprocess_for(spec, config.img_size, base=base, full_frame=True)
        train_items = bundled_split(name, Split.train, data_root=config.data_root)
        val_items = bundled_split(name, Split.val, data_root=config.data_root)
        in_memory = (len(train_items) + len(val_items)) * 4 * math.prod(pre.shape) <= IN_MEMORY_BYTES
        if in_memory:
            train, val = _Augmented(_materialize(train_items, pre), _jitter(pre)), _materialize(val_items, pre)
        else:
            train = _Images(train_items, _Then(_Then(pre.apply, torch.as_tensor), _jitter(pre)))
            val = _Images(val_items, pre.apply)
        return TrainData(train, val, list(train_items.labels), list(train_items.class_names), pre,
                         train_items.source.replace(" (train split)", ""), in_memory,
                         grayscale_to_rgb=pre.channels == 3 and name.value in GRAYSCALE_BUNDLED)
    if config.data_root is not None:
        raise InputError(f"--data-root is for bundled datasets ({', '.join(b.value for b in Bundled if b is not Bundled.digits)}); "
                         f"--data {config.data} is a folder")
    train_set, val_set = split_imagefolder(Path(config.data), val_split=config.val_split, seed=config.seed,
                                           reporter=reporter)
    pre = preprocess_for(spec, config.img_size, base=base, full_frame=False)
    return TrainData(_Images(train_set, _augment(pre)), _Images(val_set, pre.apply), list(train_set.labels),
                     list(train_set.class_names), pre, str(config.data), False,
                     grayscale_to_rgb=pre.channels == 3 and _mostly_grayscale(train_set.paths))
