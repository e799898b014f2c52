"""``runners.open``: the one place that maps a file and a backend to a runner; the runners' lifecycle (``__init__``
stores, ``activate`` opens, the first use activates, ``close`` releases, ``with`` does both).

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
    assert not runner.active and runner.__dict__["_session"] is None  # closed: ONNX Runtime's session released
    with runners.open(str(path), "ort", threads=1) as again:
        assert isinstance(again, OnnxRuntimeRunner)


def test_a_runner_opens_on_activate_or_first_use_and_again_after_close(tmp_path):
    path = tmp_path / "model.onnx"
    runner = OnnxRuntimeRunner(path, threads=1)  # stores the path: nothing is read yet (the file does not exist)
    assert not runner.active
    with pytest.raises(InputError, match="ONNX file not found"):
        runner.activate()
    assert not runner.active
    _graph(path)
    batch = np.ones((2, 3, 4, 4), np.float32)
    assert runner.infer(batch).shape == (2, 3) and runner.active  # the first infer activates
    runner.close()
    assert runner.input_shape == (3, 4, 4) and runner.active  # reading what activate() sets opens it again
    assert runner.session.get_inputs()[0].name == runner.input_name == "input"
    runner.close()
    runner.close()  # closing twice is harmless


def test_open_activates_so_a_broken_file_fails_there_unless_asked_not_to(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not an onnx graph")
    with pytest.raises(InputError, match="ONNX Runtime cannot load model.onnx"):
        runners.open(path)  # verify skips, and bench reports, a file that cannot load at open
    lazy = runners.open(path, activate=False)
    assert not lazy.active
    with pytest.raises(InputError, match="ONNX Runtime cannot load model.onnx"):
        lazy.infer(np.ones((1, 3, 4, 4), np.float32))
    assert not lazy.active


def test_bench_times_the_bare_session_call_of_an_activated_runner(tmp_path):
    from deploykit.bench.measure import ort_step

    batch = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    with runners.open(_graph(tmp_path / "model.onnx")) as runner:
        np.testing.assert_allclose(ort_step(runner, batch)()[0], runner.infer(batch), rtol=1e-6)


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
