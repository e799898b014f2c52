"""Shared fixtures: tiny real models and real images, built in the test session (no downloads)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _models import make_checkpoint

os.environ.setdefault("OMP_NUM_THREADS", "2")
# deploykit's user cache (artifact hashes, compiled models) goes to a folder of this test session, not ~/.cache
# (removed when the session ends, so that test runs leave nothing behind in /tmp)
if "DEPLOYKIT_CACHE_DIR" not in os.environ:
    _session_cache = tempfile.mkdtemp(prefix="deploykit-test-cache-")
    os.environ["DEPLOYKIT_CACHE_DIR"] = _session_cache
    atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)


def pytest_runtest_setup(item):
    """``@pytest.mark.gpu`` tests run where PyTorch sees a CUDA GPU and skip with the reason elsewhere."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU: PyTorch sees none here")


@pytest.fixture(scope="session")
def checkpoint():
    """:func:`make_checkpoint` for tests and fixtures of any scope."""
    return make_checkpoint


@pytest.fixture(scope="session")
def lenet_ckpt(tmp_path_factory) -> Path:
    """A LeNet (10 classes, 1x28x28) deploykit checkpoint at seeded random init."""
    return make_checkpoint(tmp_path_factory.mktemp("lenet") / "lenet.pt", "lenet")


@pytest.fixture(autouse=True)
def _fake_cpu(monkeypatch):
    """``DEPLOYKIT_TEST_CPU="AMD EPYC 7B13 64-Core Processor"`` and ``DEPLOYKIT_TEST_ISA=avx2,fma`` make bench see that
    CPU name and ISA list, so the suite can be run as on another host (with ``COLUMNS=80``/``300`` for the width):
    no test may depend on where a renderer wraps the host line."""
    name, isa = os.environ.get("DEPLOYKIT_TEST_CPU"), os.environ.get("DEPLOYKIT_TEST_ISA")
    if name is None and isa is None:
        return
    import deploykit.bench.host as host

    real = host._cpuinfo
    monkeypatch.setattr(host, "_cpuinfo", lambda: (name if name is not None else real()[0],
                                                   set(isa.split(",")) if isa is not None else real()[1]))


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder, so default `exports/` paths never touch the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from deploykit.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """A flat folder of real photos (scikit-image samples) in assorted formats and modes."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    root = Path(skimage.data.__file__).parent
    Image.open(root / "astronaut.png").save(folder / "astronaut.jpg", quality=90)
    Image.open(root / "chelsea.png").save(folder / "chelsea.png")
    Image.open(root / "coffee.png").convert("RGBA").save(folder / "coffee_rgba.png")
    Image.open(root / "camera.png").save(folder / "camera_gray.bmp")
    Image.open(root / "rocket.jpg").convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "rocket_palette.gif")
    coins = np.asarray(Image.open(root / "coins.png"), dtype=np.uint16) * 257
    Image.fromarray(coins).save(folder / "coins_16bit.png")
    Image.open(root / "motorcycle_left.png").save(folder / "motorcycle.webp")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="session")
def resnet18_sd(tmp_path_factory) -> Path:
    """A torchvision-style ResNet-18 state_dict with a 5-class head."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), path)
    return path
