"""Real small data for the precision tests: scikit-learn's digits as an ImageFolder, and a LeNet trained on it.

Imported by tests/precision/ and other tests (kept out of conftest.py so several authors do not edit one file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [str(i) for i in range(10)]


def digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as deploykit bundles them (``deploykit.data.digits_split``): the 8x8 uint8 images and
    labels of the fixed ``train`` split or the held-out ``val`` split."""
    from deploykit.data import Split, digits_split

    data = digits_split(Split(split))
    return np.asarray(data.images), np.asarray(data.labels)


def write_imagefolder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img, "L").save(root / str(label) / f"{i:04d}.png")
    return root


def train_lenet(path: Path, images: np.ndarray, labels: np.ndarray, epochs: int = 6, seed: int = 0) -> float:
    """Train deploykit's registered LeNet on digits (preprocessed exactly like inference); return train acc."""
    import torch

    from deploykit.models.checkpoint import save_checkpoint
    from deploykit.models.registry import build_model, get_spec
    from deploykit.preprocess import Preprocess

    spec = get_spec("lenet")
    pre = Preprocess(channels=1, height=28, width=28, mean=tuple(spec.mean), std=tuple(spec.std))
    x = torch.from_numpy(np.stack([pre.apply(Image.fromarray(img, "L")) for img in images]))
    y = torch.from_numpy(labels.astype(np.int64))
    torch.manual_seed(seed)
    model = build_model("lenet", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    save_checkpoint(path, model, arch="lenet", num_classes=10, preprocess=pre, class_names=CLASSES)
    return acc
