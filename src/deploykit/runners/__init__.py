"""Runners share one interface (``Runner.infer``) and one lifecycle (``activate``, ``close``, ``with``); each
imports its framework inside ``activate``, so importing them costs nothing. :func:`open` is the one place that
decides which runner runs a file on which backend."""

from __future__ import annotations

from pathlib import Path

from deploykit.errors import InputError
from deploykit.manifest import artifact_kind
from deploykit.messages import SILENT, Reporter
from deploykit.runners.base import Backend, Device, Runner
from deploykit.runners.onnxrt import OnnxRuntimeRunner
from deploykit.runners.openvino import OpenVINORunner
from deploykit.runners.tensorrt import TensorRTRunner

__all__ = ["Backend", "Device", "OnnxRuntimeRunner", "OpenVINORunner", "Runner", "TensorRTRunner", "open"]


def open(path: Path | str, backend: Backend | str | None = None, *, device: Device | str = Device.cpu,  # noqa: A001
         threads: int | None = None, inference_precision: str = "f32", reporter: Reporter = SILENT,
         session_config: dict[str, str] | None = None, activate: bool = True) -> Runner:
    """The runner for an artifact file (a checked path: ``Manifest.file(artifact)``). ``backend`` None: TensorRT for
    an engine, ONNX Runtime for ``.onnx``; ``ov``: OpenVINO on the CPU in ``inference_precision`` (f32 or bf16).
    An engine on ort/ov, an ONNX file on trt, OpenVINO off the CPU and torch (a checkpoint, not a file to open
    here) are refused in one line. ``activate``: open the runtime now, so a file that cannot load raises here (what
    verify's skip-on-load-error and bench's loaders expect); False: on first use."""
    path = Path(path)
    backend = None if backend is None else Backend(backend)
    device = device.value if isinstance(device, Device) else str(device)
    engine = artifact_kind(path.name) == "engine"
    if backend is Backend.torch:
        raise InputError(f"{path.name} is an exported artifact; PyTorch runs the checkpoint it was exported from")
    if backend is not None and engine != (backend is Backend.trt):
        raise InputError(f"{path.name} cannot run on --backend {backend.value}: " +
                         ("TensorRT runs engines: `deploykit build " + str(path.parent) + "`, then pass the engine"
                          if backend is Backend.trt else "an engine runs on TensorRT (--backend trt)"))
    runner: Runner
    if engine:
        runner = TensorRTRunner(path, reporter=reporter)
    elif backend is Backend.ov:
        if device != "cpu":
            raise InputError("deploykit runs OpenVINO on the CPU: use --device cpu")
        runner = OpenVINORunner(path, inference_precision=inference_precision, threads=threads)
    else:
        runner = OnnxRuntimeRunner(path, device=device, threads=threads, session_config=session_config)
    return runner.activate() if activate else runner
