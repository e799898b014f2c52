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
