"""The CUDA paths (training, PyTorch bench rows) on a host with a CUDA GPU; skipped with the reason elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_train_on_cuda_then_export_on_cpu(cli):
    result = cli("train", "lenet", "--data", "digits", "--epochs", "2", "--device", "cuda", "--seed", "0")
    assert result.exit_code == 0, result.output
    metrics = json.loads(Path("runs/lenet/metrics.json").read_text())
    assert metrics["best_val_acc"] > 50.0  # 10 classes: chance is 10%
    result = cli("export", "runs/lenet/best.pth", "--out", "ex", "--data", "digits")  # a CUDA-trained checkpoint
    assert result.exit_code == 0, result.output  # loads and verifies on the CPU


def test_bench_pytorch_on_cuda(cli, lenet_ckpt):
    result = cli("bench", lenet_ckpt, "--device", "cuda", "--backends", "torch", "--iters", "5", "--warmup", "2",
                 "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert rows and all(r["device"] == "cuda" for r in rows)


def test_export_runs_its_reference_and_onnxruntime_passes_on_cuda(resnet18_sd, tmp_path):
    """Issue 26: with a CUDA GPU the PyTorch reference and the precision stage's ONNX Runtime passes (statistics,
    bias correction, logits) run there, and the export still verifies (FP32 reference: TF32 off)."""
    import onnxruntime

    from deploykit.models.loading import LoadOptions
    from deploykit.pipeline import export_folder
    from deploykit.precision import Int8Target, PrecisionRequest
    from deploykit.precision.graph import ort_providers
    from deploykit.runners.torch import reference_device

    assert reference_device() == "cuda"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu)")
    assert ort_providers()[0] == "CUDAExecutionProvider"
    calib = Path(__file__).resolve().parents[1] / "calib"
    request = PrecisionRequest(fp16=True, int8=True, int8_for=(Int8Target.trt, Int8Target.cpu), calib=calib,
                               int8_agreement=0.9)
    result = export_folder(resnet18_sd, out=tmp_path / "r18", precision=request,
                           options=LoadOptions(arch="resnet18", input_shape=(3, 32, 32)))
    assert result.report is not None and result.report.passed, result.report.failure_summary()
    assert next(result.loaded.module.parameters()).device.type == "cpu"  # the caller's module stays on the CPU
    assert result.manifest.timings["calibration"] > 0
