"""``runners.open``: the one place that maps a file and a backend to a runner; the runners' lifecycle (``__init__``
stores, ``activate`` opens, the first use activates, ``close`` releases, ``with`` does both).

A graph of two ops built here (GlobalAveragePool -> Flatten: 3 channels in, 3 "logits" out): no model, no torch.
"""

from __future__ import annotations

import ctypes
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploykit import runners
from deploykit.bench.options import Backend as BenchBackend
from deploykit.cli.options import ArtifactBackend
from deploykit.errors import EngineMismatchError, InputError
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


# -- the TensorRT runner and bench's TensorRT steps, on fake tensorrt and cuda-python modules (no GPU here; the real
# ones run in tests/test_trt.py on a host with TensorRT) ------------------------------------------------------------
class _FakeCudart:
    """cuda-python's runtime calls the runner and bench make, on host memory: a "device" pointer is the address of
    a NumPy buffer; ``live`` holds what is allocated and not yet freed."""

    cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self) -> None:
        self.live: dict[int, object] = {}

    def _new(self, thing, address: int | None = None):
        address = address if address is not None else id(thing)
        self.live[address] = thing
        return 0, address

    def cudaMalloc(self, nbytes):
        buf = np.zeros(nbytes, np.uint8)
        return self._new(buf, buf.ctypes.data)

    cudaMallocHost = cudaMalloc

    def cudaStreamCreate(self):
        return self._new(object())

    cudaEventCreate = cudaStreamCreate

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(int(dst), int(src), nbytes)
        return (0,)

    def cudaStreamSynchronize(self, *handles):
        return (0,)

    cudaEventRecord = cudaEventSynchronize = cudaStreamSynchronize

    def cudaEventElapsedTime(self, start, end):
        return 0, 0.25

    def _free(self, address):
        del self.live[int(address)]
        return (0,)

    cudaFree = cudaFreeHost = cudaStreamDestroy = cudaEventDestroy = _free


def _fake_tensorrt() -> types.ModuleType:
    """An engine of one op (the mean over H x W: 3 x 4 x 4 in, 3 "logits" out) with a 1..8 batch profile."""
    trt = types.ModuleType("tensorrt")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32

    class ILogger:
        Severity = types.SimpleNamespace(ERROR=1, WARNING=2)

        def __init__(self) -> None:
            pass

    class Context:
        def __init__(self) -> None:
            self.batch, self.address = 0, {}

        def set_input_shape(self, name, shape):
            self.batch = shape[0]
            return 1 <= shape[0] <= 8

        def get_tensor_shape(self, name):
            return (self.batch, 3)

        def set_tensor_address(self, name, address):
            self.address[name] = address
            return True

        def execute_async_v3(self, stream):
            n = self.batch * 3 * 4 * 4
            x = np.frombuffer((ctypes.c_float * n).from_address(self.address["input"]), np.float32)
            y = np.ascontiguousarray(x.reshape(self.batch, 3, 4, 4).mean(axis=(2, 3)), np.float32)
            ctypes.memmove(self.address["logits"], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("input", "logits")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return (-1, 3, 4, 4) if name == "input" else (-1, 3)

        def get_tensor_profile_shape(self, name, profile):
            return (1, 3, 4, 4), (4, 3, 4, 4), (8, 3, 4, 4)

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine() if plan == b"plan" else None

    trt.ILogger, trt.Runtime = ILogger, Runtime
    return trt


def test_the_tensorrt_runner_activates_runs_and_frees_what_it_allocated(tmp_path, monkeypatch):
    from deploykit.bench.measure import TrtSteps
    from deploykit.runners.tensorrt import TensorRTRunner
    from deploykit.tensorrt.host import Host

    rt, trt = _FakeCudart(), _fake_tensorrt()
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, rt
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, module)
    probe = lambda: (trt, Host("10.3.0.30", "Orin", "8.7"))  # noqa: E731
    path = tmp_path / "model.fp32.engine"
    path.write_bytes(b"plan")
    runner = TensorRTRunner(path, probe=probe)
    assert not runner.active and rt.live == {}  # __init__ loads nothing
    batch = np.random.default_rng(0).standard_normal((11, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(runner.infer(batch), batch.mean(axis=(2, 3)), rtol=1e-5)  # 8 + 3, one profile
    assert runner.active and (runner.min_batch, runner.max_batch, runner.input_shape) == (1, 8, (3, 4, 4))
    assert len(rt.live) == 3  # two device buffers and the stream

    steps = TrtSteps(runner, batch[:4])  # bench's timing on the activated runner: pinned buffers, two events
    assert steps.end_to_end() == steps.compute() == 0.25 and len(rt.live) == 7
    logits = np.frombuffer((ctypes.c_float * 12).from_address(steps.host_out), np.float32).reshape(4, 3)
    np.testing.assert_allclose(logits, batch[:4].mean(axis=(2, 3)), rtol=1e-5)  # end to end: copied back
    with pytest.raises(InputError, match="batches of 1 to 8, not 9"):
        TrtSteps(runner, np.zeros((9, 3, 4, 4), np.float32))
    steps.close()
    runner.close()
    assert rt.live == {} and not runner.active

    (tmp_path / "model.fp16.engine").write_bytes(b"not a plan")
    broken = TensorRTRunner(tmp_path / "model.fp16.engine", probe=probe)
    with pytest.raises(EngineMismatchError, match="cannot load model.fp16.engine"):
        broken.activate()
    assert not broken.active and rt.live == {}
