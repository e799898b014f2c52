"""examples/jetson: the edge programs preprocess exactly as deploykit does.

The Python program is self-contained (no deploykit on the device); its preprocessing must equal deploykit's.
The C++ program's TensorRT-free part (manifest + preprocessing) is built with CMake where a compiler, CMake,
nlohmann-json and stb are present, and its output compared with deploykit's on real photos: bit-identical for
PNG; JPEG decoders (stb vs libjpeg) may differ by a level or two.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploykit.preprocess import Preprocess

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "jetson"
PREPROCESSINGS = [
    Preprocess(1, 28, 28, (0.5,), (0.5,)),
    Preprocess(3, 224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize=256),
    Preprocess(3, 64, 64, (0.5,) * 3, (0.5,) * 3, resize=73, interpolation="bicubic"),
    Preprocess(3, 32, 40, (0.5,) * 3, (0.5,) * 3),
]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("jetson_classify", EXAMPLES / "classify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pre", PREPROCESSINGS, ids=lambda p: f"{p.channels}x{p.height}x{p.width}-{p.interpolation}")
def test_python_example_preprocesses_like_deploykit(example, pre, photos):
    for image in sorted(p for p in photos.iterdir() if p.suffix != ".txt"):
        np.testing.assert_array_equal(example.preprocess(image, pre.to_dict()), pre.load(image), err_msg=image.name)


def test_python_example_topk(example):
    logits = np.array([0.0, 3.0, 1.0, 2.0], np.float32)
    top = example.topk(logits, 3)
    assert [i for i, _ in top] == [1, 3, 2]
    assert top[0][1] == pytest.approx(np.exp(3) / np.exp(logits).sum())


ENGINES = [{"path": "model.fp32.engine", "precision": "fp32", "engine": {"tensorrt": "10.3.0"}},
           {"path": "model.fp16.engine", "precision": "fp16", "engine": {"tensorrt": "10.3.0"}}]


def test_python_example_never_runs_another_engine_than_asked(example, tmp_path):
    assert example.select_engine(ENGINES, None, tmp_path)["path"] == "model.fp32.engine"  # default: the first
    assert example.select_engine(ENGINES, "model.fp16.engine", tmp_path)["path"] == "model.fp16.engine"
    with pytest.raises(SystemExit) as exc:
        example.select_engine(ENGINES, "model.int8.engine", tmp_path)
    assert str(exc.value) == (f"error: {tmp_path}/deploykit.json lists no engine 'model.int8.engine'; it has: "
                              "model.fp32.engine, model.fp16.engine")


def test_python_example_stops_when_tensorrt_cannot_load_the_plan(example, tmp_path, monkeypatch, photos):
    """deserialize_cuda_engine returns None (and logs why) for a plan from another TensorRT: a clear exit."""
    import sys
    import types

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return None

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0", Logger=Logger,
                                                                       Runtime=Runtime))
    monkeypatch.setattr(example, "cuda_runtime", lambda: None)
    monkeypatch.setattr(example, "check_compatible", lambda facts, trt: None)
    (tmp_path / "deploykit.json").write_text(json.dumps({"artifacts": ENGINES}))
    (tmp_path / "model.fp16.engine").write_bytes(b"plan")
    with pytest.raises(SystemExit) as exc:
        example.classify(tmp_path, photos / "chelsea.png", "model.fp16.engine", 5)
    assert str(exc.value).startswith("error: TensorRT 10.3.0 cannot load model.fp16.engine")
    assert f"deploykit build {tmp_path} --precision fp16" in str(exc.value)


def _cmake_reason() -> str | None:
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        return "needs cmake and a C++ compiler"
    if not Path("/usr/include/nlohmann/json.hpp").exists() or not Path("/usr/include/stb/stb_image.h").exists():
        return "needs nlohmann-json3-dev and libstb-dev (apt)"
    return None


@pytest.fixture(scope="module")
def dk_preprocess(tmp_path_factory) -> Path:
    reason = _cmake_reason()
    if reason:
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("cpp_build")
    configure = subprocess.run(["cmake", "-S", str(EXAMPLES / "cpp"), "-B", str(build)], capture_output=True,
                               text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run(["cmake", "--build", str(build), "--target", "dk_preprocess", "-j", "2"],
                              capture_output=True, text=True, timeout=600)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return build / "dk_preprocess"


@pytest.mark.parametrize("pre", PREPROCESSINGS, ids=lambda p: f"{p.channels}x{p.height}x{p.width}-{p.interpolation}")
def test_cpp_example_preprocesses_like_deploykit(dk_preprocess, pre, tmp_path):
    import skimage.data

    root = Path(skimage.data.__file__).parent
    Image.open(root / "coffee.png").convert("RGBA").save(tmp_path / "coffee_rgba.png")
    images = [root / "astronaut.png", root / "chelsea.png", root / "camera.png", root / "motorcycle_left.png",
              tmp_path / "coffee_rgba.png", root / "rocket.jpg"]
    (tmp_path / "deploykit.json").write_text(json.dumps({
        "schema": "deploykit-manifest/1", "preprocess": pre.to_dict(), "model": {"class_names": None},
        "input": {"name": "input"}, "output": {"name": "logits"}, "artifacts": []}))
    for image in images:
        out = tmp_path / "out.f32"
        run = subprocess.run([str(dk_preprocess), str(tmp_path / "deploykit.json"), str(image), str(out)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        got = np.fromfile(out, np.float32).reshape(pre.shape)
        want = pre.load(image)
        if image.suffix == ".png":
            np.testing.assert_array_equal(got, want, err_msg=image.name)
        else:  # another JPEG decoder: at most 2 levels apart on a few pixels
            assert np.abs(got - want).max() <= 2 / 255 / min(pre.std) + 1e-6
            assert (np.abs(got - want) > 1e-6).mean() < 0.02


def test_cpp_example_reports_a_bad_manifest(dk_preprocess, tmp_path):
    (tmp_path / "deploykit.json").write_text("{}")
    run = subprocess.run([str(dk_preprocess), str(tmp_path / "deploykit.json"), "x.png", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "not a deploykit manifest" in run.stderr
