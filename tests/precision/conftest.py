"""The precision tests' session fixtures: a LeNet trained on digits, and a ResNet-18 export with every precision
(built once for every tests/precision/ module)."""

from __future__ import annotations

import pytest
from PIL import Image

from _digits import digits_arrays, train_lenet, write_imagefolder
from _precision_common import REPO_CALIB


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Trained LeNet checkpoint, a labelled held-out ImageFolder, and a calibration folder (train images)."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = digits_arrays("train")
    acc = train_lenet(root / "lenet.pt", images, labels)
    assert acc > 0.9, f"LeNet should fit digits, got {acc:.3f}"
    held_out, held_out_labels = digits_arrays("val")
    write_imagefolder(root / "test", held_out[:200], held_out_labels[:200])
    calib = root / "calib"
    calib.mkdir()
    for i in range(64):
        Image.fromarray(images[i], "L").save(calib / f"{i:04d}.png")
    return {"ckpt": root / "lenet.pt", "test": root / "test", "calib": calib}


@pytest.fixture(scope="session")
def resnet_export(tmp_path_factory, resnet18_sd):
    """ResNet-18 (3x32x32 input) exported with --fp16 and INT8 for TensorRT and CPU, calibrated on real photos."""
    from deploykit.models.loading import LoadOptions
    from deploykit.pipeline import export_folder
    from deploykit.precision import CalibMethod, Int8Target, PrecisionRequest

    out = tmp_path_factory.mktemp("r18") / "export"
    req = PrecisionRequest(fp16=True, int8=True, int8_for=(Int8Target.trt, Int8Target.cpu), calib=REPO_CALIB,
                           calib_method=CalibMethod.entropy)
    result = export_folder(resnet18_sd, out=out, options=LoadOptions(arch="resnet18", input_shape=(3, 32, 32)),
                           precision=req, verify=True)
    return result
