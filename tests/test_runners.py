"""``runners.open``: the one place that maps a file and a backend to a runner; runners close and are context managers.

A graph of two ops built here (GlobalAveragePool -> Flatten: 3 channels in, 3 "logits" out): no model, no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploykit import runners
from deploykit.bench.options import Backend as BenchBackend
from deploykit.cli.options import ArtifactBackend
from deploykit.errors import InputError
from deploykit.runners.base import Backend
from deploykit.runners.onnxrt import OnnxRuntimeRunner


def _graph(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"])],
        "pool", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_one_backend_enum_with_the_cli_values():
    assert [b.value for b in Backend] == ["torch", "ort", "ov", "trt"]
    assert BenchBackend is Backend  # bench --backends and verify/predict --backend name the same thing
    assert [b.value for b in ArtifactBackend] == ["ort", "ov", "trt"]  # an artifact's --backend: torch runs checkpoints


def test_open_picks_onnx_runtime_for_onnx_and_the_runner_closes_on_exit(tmp_path):
    path = _graph(tmp_path / "model.onnx")
    batch = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    with runners.open(path) as runner:
        assert isinstance(runner, OnnxRuntimeRunner) and runner.path == path
        np.testing.assert_allclose(runner.infer(batch), batch.mean(axis=(2, 3)), rtol=1e-6)
    assert runner.session is None  # closed: ONNX Runtime's session released
    with runners.open(str(path), "ort", threads=1) as again:
        assert isinstance(again, OnnxRuntimeRunner)


@pytest.mark.parametrize("name, backend, device, says", [
    ("model.onnx", "trt", "cpu", "TensorRT runs engines"),
    ("model.fp16.engine", "ort", "cpu", "an engine runs on TensorRT"),
    ("model.fp16.engine", Backend.ov, "cpu", "an engine runs on TensorRT"),
    ("model.onnx", "ov", "cuda", "OpenVINO on the CPU"),
    ("model.onnx", Backend.torch, "cpu", "PyTorch runs the checkpoint"),
])
def test_open_refuses_a_file_on_a_backend_that_cannot_run_it(tmp_path, name, backend, device, says):
    (tmp_path / name).write_bytes(b"not opened: refused before")
    with pytest.raises(InputError, match=says):
        runners.open(tmp_path / name, backend, device=device)
