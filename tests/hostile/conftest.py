"""Fixtures for the hostile suite (issue 10): tiny real models and exports built once per session.

Every test here carries the ``hostile`` marker; ``tests/hostile/count.py`` turns a run into
"hostile runs: N, clean: K" per category (one category per test module).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _hostile import invoke, lenet_checkpoint as _lenet_checkpoint
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "2")

CLASSES_A = [str(i) for i in range(10)]
CLASSES_B = [chr(ord("a") + i) for i in range(10)]


def pytest_configure(config):
    config.addinivalue_line("markers", "hostile: a hostile-input case of issue 10 (counted by tests/hostile/count.py)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.hostile)


@pytest.fixture(scope="session")
def hostile_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="session")
def lenet_ckpt(hostile_root) -> Path:
    """A deploykit checkpoint: LeNet, 10 classes "0".."9", 1x28x28."""
    return _lenet_checkpoint(hostile_root / "lenet_a.pth", 0, CLASSES_A)


@pytest.fixture(scope="session")
def lenet_ckpt_b(hostile_root) -> Path:
    """Another LeNet (other weights, classes "a".."j"): a re-export with it changes model.onnx and the names."""
    return _lenet_checkpoint(hostile_root / "lenet_b.pth", 1, CLASSES_B)


@pytest.fixture(scope="session")
def lenet_state_dict(hostile_root) -> Path:
    import torch

    from deploykit.models.registry import build_model

    torch.manual_seed(0)
    path = hostile_root / "lenet_sd.pth"
    torch.save(build_model("lenet", num_classes=10).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def lenet_pt2(hostile_root) -> Path:
    """A clean torch.export program of LeNet."""
    import torch

    from deploykit.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10).eval()
    program = torch.export.export(model, (torch.zeros(1, 1, 28, 28),))
    path = hostile_root / "lenet.pt2"
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="session")
def digit_images(hostile_root) -> Path:
    """A flat folder of 8 real digit images (28x28 grayscale PNG), the verification/predict inputs."""
    from sklearn.datasets import load_digits

    folder = hostile_root / "digits"
    folder.mkdir()
    digits = load_digits()
    for i in range(8):
        img = Image.fromarray((digits.images[i] / 16.0 * 255).round().astype(np.uint8), "L").resize((28, 28))
        img.save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def image(digit_images) -> Path:
    return digit_images / "0.png"


def _export(ckpt: Path, out: Path, data: Path, *extra) -> Path:
    result = invoke("export", ckpt, "--out", out, "--data", data, *extra)
    assert result.code == 0 and result.exception is None, result.describe()
    return out


@pytest.fixture(scope="session")
def base_export(hostile_root, lenet_ckpt, digit_images) -> Path:
    """A verified export folder of lenet_a (never modified: tests copy it)."""
    return _export(lenet_ckpt, hostile_root / "export_a", digit_images)


@pytest.fixture(scope="session")
def other_export(hostile_root, lenet_ckpt_b, digit_images) -> Path:
    """A verified export folder of lenet_b (its model.onnx is a valid ONNX that differs from base_export's)."""
    return _export(lenet_ckpt_b, hostile_root / "export_b", digit_images)


@pytest.fixture
def export_copy(base_export, tmp_path) -> Path:
    """A copy of base_export; a source path stored relative to the folder gets its checkpoint copied along."""
    dst = tmp_path / "exp"
    shutil.copytree(base_export, dst)
    source = json.loads((base_export / "deploykit.json").read_text())["source"]["path"]
    if not os.path.isabs(source):
        (dst / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(base_export / source, dst / source)
    return dst


@pytest.fixture
def retrained(export_copy, lenet_ckpt, lenet_ckpt_b, tmp_path):
    """export_copy made from tmp_path/model.pth (lenet_a), which is then retrained in place (now lenet_b): a
    re-export of model.pth replaces model.onnx and the class names ("0".. -> "a..")."""
    ckpt = tmp_path / "model.pth"
    shutil.copy(lenet_ckpt, ckpt)
    manifest = export_copy / "deploykit.json"
    data = json.loads(manifest.read_text())
    data["source"]["path"] = str(ckpt)
    manifest.write_text(json.dumps(data, indent=2))
    shutil.copy(lenet_ckpt_b, ckpt)
    return export_copy, ckpt


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file a payload would create; it must never appear."""
    return tmp_path / "PWNED"


@pytest.fixture
def manifest_of():
    def read(folder: Path) -> dict:
        return json.loads((Path(folder) / "deploykit.json").read_text())
    return read
