"""On a Jetson there is rarely a matching torch: `predict`, `verify`, `bench` and `build` must run without it.

Each test runs the real CLI in a subprocess whose `import torch` / `import torchvision` raise ImportError (a
meta-path blocker installed by a sitecustomize.py on PYTHONPATH), on a real LeNet export folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deploykit.tensorrt.host import gpu_info, probe_host

BLOCKER = textwrap.dedent('''
    import sys

    class _NoTorch:
        """Make torch and torchvision unimportable, as on a Jetson image without them."""
        blocked = ("torch", "torchvision")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ImportError(f"No module named {name!r} (blocked by the torch-free test)")
            return None

    sys.meta_path.insert(0, _NoTorch())
''')


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("no_torch_site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    env["DEPLOYKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="module")
def lenet_export(tmp_path_factory, checkpoint) -> Path:
    """A LeNet export folder (dynamic batch) with model.onnx and model.fp16.onnx, made with torch in this process."""
    from deploykit.pipeline import export_folder
    from deploykit.precision import PrecisionRequest

    root = tmp_path_factory.mktemp("lenet_torchfree")
    ckpt = checkpoint(root / "lenet.pt", "lenet", class_names=[f"digit{i}" for i in range(10)])
    return export_folder(ckpt, out=root / "exp", dynamic_batch=True, precision=PrecisionRequest(fp16=True)).folder


def run_cli(env: dict[str, str], *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploykit", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_blocker_really_blocks_torch(no_torch_env):
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the torch-free test" in probe.stderr


def test_cli_import_pulls_in_no_heavy_framework():
    code = ("import sys, deploykit.cli, deploykit.tensorrt, deploykit.tensorrt.host, deploykit.tensorrt.build, "
            "deploykit.runners.tensorrt, deploykit.predict, deploykit.verify; "
            "print(sorted(m for m in ('torch', 'torchvision', 'tensorrt', 'cuda', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_predict_on_onnx_without_torch(no_torch_env, lenet_export, photos):
    from deploykit.predict import load_predictor

    images = [photos / "chelsea.png", photos / "camera_gray.bmp", photos / "coffee_rgba.png"]
    for target in (lenet_export, lenet_export / "model.onnx", lenet_export / "model.fp16.onnx"):
        result = run_cli(no_torch_env, "predict", target, *images, "--json", "--topk", "3")
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)["predictions"]
        assert [p["image"] for p in got] == [str(i) for i in images]
        assert all(len(p["top"]) == 3 and p["top"][0]["label"].startswith("digit") for p in got)
        # the same numbers as an in-process run (which has torch available but does not need it)
        want = load_predictor(target).topk(images, k=3)
        for g, w in zip(got, want):
            assert [t["index"] for t in g["top"]] == [t["index"] for t in w["top"]]
            np.testing.assert_allclose([t["probability"] for t in g["top"]],
                                       [t["probability"] for t in w["top"]], rtol=1e-5)


def test_verify_without_torch_judges_against_pytorchs_recorded_logits(no_torch_env, lenet_export):
    """On a device without torch, each artifact -- model.onnx too -- is judged against PyTorch's own logits,
    recorded at export on the folder's evidence images, with the same numbers as the export's verdict."""
    result = run_cli(no_torch_env, "verify", lenet_export, "--json")
    assert result.returncode == 0, result.stderr
    assert "instead of PyTorch" not in result.stderr
    report = json.loads(result.stdout)
    assert report["reference"] == "pytorch-recorded"
    assert report["data"]["n_images"] == 210 and report["data"]["domain"] is False  # bundled photos: said so
    assert [(a["path"], a["precision"], a["passed"]) for a in report["artifacts"]] == [
        ("model.onnx", "fp32", True), ("model.fp16.onnx", "fp16", True)]
    manifest = json.loads((lenet_export / "deploykit.json").read_text())
    for art in report["artifacts"]:  # the export's verdict, on the same images against the same logits
        recorded = next(a for a in manifest["artifacts"] if a["path"] == art["path"])["parity"]
        assert recorded["n_images"] == 210 and recorded["passed"] == art["passed"]
        assert recorded["metrics"]["top1_agreement"] == art["metrics"]["top1_agreement"]
        np.testing.assert_allclose(recorded["metrics"]["max_abs_diff"], art["metrics"]["max_abs_diff"], rtol=1e-5)


def test_verify_without_torch_on_other_images_recomputes_with_the_fp32_onnx(no_torch_env, lenet_export, photos):
    result = run_cli(no_torch_env, "verify", lenet_export, "--data", photos, "--json")
    assert result.returncode == 0, result.stderr
    assert "torch is not installed: comparing against model.onnx instead of PyTorch" in result.stderr
    report = json.loads(result.stdout)
    assert report["reference"] == "onnx-fp32" and report["data"]["n_images"] == len(list(photos.glob("*.*"))) - 1  # notes.txt is no image
    assert [(a["path"], a["passed"]) for a in report["artifacts"]] == [("model.fp16.onnx", True)]


def test_verify_an_fp32_only_folder_without_torch(no_torch_env, tmp_path_factory, checkpoint):
    from deploykit.pipeline import export_folder

    root = tmp_path_factory.mktemp("fp32_only")
    folder = export_folder(checkpoint(root / "lenet.pt", "lenet"), out=root / "exp").folder
    result = run_cli(no_torch_env, "verify", folder, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reference"] == "pytorch-recorded"
    assert [(a["path"], a["passed"]) for a in report["artifacts"]] == [("model.onnx", True)]


def test_tampered_evidence_is_refused_with_one_line(no_torch_env, lenet_export, tmp_path):
    import shutil

    for name in ("evidence-logits.npy", "evidence-images.npy"):
        copy = tmp_path / name.replace(".npy", "")
        shutil.copytree(lenet_export, copy)
        array = np.load(copy / name)
        array.flat[0] = array.flat[0] + 1  # one value changed, the file the same size
        np.save(copy / name, array)
        result = run_cli(no_torch_env, "verify", copy)
        assert result.returncode != 0
        # progress lines ("-> verifying ...") may come first; the refusal is one error line
        errors = [line for line in result.stderr.splitlines() if not line.startswith("-> ")]
        assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr
        line = errors[0]
        assert line.startswith("error:") and name in line and "sha256 differs" in line


def test_bench_without_torch_skips_pytorch_and_tensorrt_with_reasons(no_torch_env, lenet_export):
    result = run_cli(no_torch_env, "bench", lenet_export, "--backends", "torch,ort,trt", "--precisions", "fp32",
                     "--iters", "3", "--warmup", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(r["backend"], r["precision"], r["device"]) for r in report["results"]] == [("ort", "fp32", "cpu")]
    reasons = {s["backend"]: s["reason"] for s in report["host"]["skipped"]}
    assert "PyTorch is not installed" in reasons["torch"]
    assert "NVIDIA GPU" in reasons["trt"] and "--device cuda" in reasons["trt"]  # advice fits the host


def test_bench_one_artifact_without_torch(no_torch_env, lenet_export):
    result = run_cli(no_torch_env, "bench", lenet_export / "model.fp16.onnx", "--iters", "3", "--warmup", "1",
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(r["backend"], r["precision"]) for r in report["results"]] == [("ort", "fp16")]
    assert report["results"][0]["speedup_vs_torch"] is None  # no PyTorch eager FP32 row to compare with
    assert [s["backend"] for s in report["host"]["skipped"] if s["backend"] != "ov"] == ["torch"]


@pytest.mark.skipif(isinstance(gpu_info(), tuple), reason="a CUDA GPU is visible here")
def test_bench_on_cuda_without_torch_or_gpu_says_so(no_torch_env, lenet_export):
    """--device cuda asks cuda-python for the GPU when torch is missing: one line, exit 3, no ImportError."""
    result = run_cli(no_torch_env, "bench", lenet_export, "--device", "cuda", "--iters", "3")
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: --device cuda: no CUDA GPU is usable here (PyTorch is not installed; ")
    assert "Traceback" not in result.stderr


def test_verify_one_artifact_without_torch(no_torch_env, lenet_export):
    result = run_cli(no_torch_env, "verify", lenet_export / "model.fp16.onnx", "--json")
    assert result.returncode == 0, result.stderr
    assert [a["path"] for a in json.loads(result.stdout)["artifacts"]] == ["model.fp16.onnx"]
    result = run_cli(no_torch_env, "verify", lenet_export / "model.onnx", "--json")  # judged against PyTorch's record
    assert result.returncode == 0, result.stderr
    assert [a["path"] for a in json.loads(result.stdout)["artifacts"]] == ["model.onnx"]


def test_build_without_torch_or_tensorrt_exits_3_with_the_way_forward(no_torch_env, lenet_export):
    if _trt_here():
        pytest.skip("TensorRT and a GPU are here: the build would succeed")
    result = run_cli(no_torch_env, "build", lenet_export, "--precision", "fp16", "--workspace", "1")
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip()
    assert "Traceback" not in line and line.startswith("error:")
    assert "TensorRT's Python bindings (import tensorrt) are not installed" in line
    assert 'pip install "deploykit[trt]"' in line and "JetPack" in line
    assert line.endswith(f"deploykit build {lenet_export} --precision fp16 --workspace 1")


def _trt_here() -> bool:
    return not isinstance(probe_host(), list)
