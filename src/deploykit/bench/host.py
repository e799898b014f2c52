"""The machine a bench runs on: what it is (``host_info``, the ``host`` block of ``bench.json``) and what it can
run (:func:`probe` -> :class:`Capabilities`, probed once per bench and handed to the planner).

Every question bench asks TensorRT or CUDA goes through this module: :func:`probe`, :func:`gpu_name`,
:func:`cuda_used_mb` and :func:`engine_unusable`. The runners bench times are loaded in ``deploykit.bench.measure``.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import deploykit.tensorrt.host as tensorrt_host  # looked up at call time: tests hand it a fake probe
from deploykit.bench.options import Backend, BenchOptions, available_cores
from deploykit.errors import EngineMismatchError, MissingDependencyError
from deploykit.manifest import Artifact
from deploykit.runners.base import Device
from deploykit.runners.openvino import native_bf16, openvino_available

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimdhp", "asimddp")
DENORMALS = "flush-to-zero"  # the one denormal policy every backend is timed under
NOT_PROBED = "not probed"
TORCH_MISSING = "PyTorch is not installed"
TORCH_NO_CUDA = "this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False)"
TRT_MISSING = "TensorRT is not installed: pip install 'deploykit[trt]' (needs an NVIDIA GPU)"


# ------------------------------------------------------------------------------------------ capabilities


@dataclass(frozen=True)
class Capabilities:
    """What this host can run, as the planner sees it. :func:`probe` fills it in; a test builds one directly.

    Each ``*_missing`` says why its capability is False (a skip reason); it is not read when that is True.
    """

    torch: bool = False  # PyTorch imports
    torch_cuda: bool = False  # ... and sees a CUDA GPU
    onnxruntime: bool = False
    ort_cuda: bool = False  # ONNX Runtime has its CUDA execution provider
    openvino: bool = False
    ov_bf16: bool = False  # the CPU computes bf16 natively (OpenVINO's CPU capabilities list BF16)
    cuda: bool = False  # a CUDA GPU is here, seen by PyTorch or, without it (a Jetson image), by cuda-python
    cuda_missing: str = NOT_PROBED
    trt: bool = False  # TensorRT, deploykit's TensorRT runner, cuda-python and a GPU
    trt_missing: str = NOT_PROBED
    trt_host: Any = None  # the TensorRT and GPU engines load on (deploykit.tensorrt.host.Host), checked against their facts

    def require_cuda(self) -> None:
        """--device cuda needs a CUDA GPU; only the PyTorch rows need torch, ONNX Runtime and TensorRT rows do not."""
        if not self.cuda:
            raise MissingDependencyError(f"--device cuda: no CUDA GPU is usable here ({self.cuda_missing}); "
                                         "use --device cpu")


def probe(backends: Iterable[Backend] = tuple(Backend), device: Device = Device.cpu) -> Capabilities:
    """What this host can run, for ``backends`` on ``device``. Only what a plan can read is probed: CUDA on
    ``--device cuda`` (and for the advice of a TensorRT row asked for on the CPU), TensorRT only for trt rows on
    CUDA, OpenVINO only for ov rows."""
    backends = set(backends)
    cpu = device is Device.cpu
    found: dict[str, Any] = {}
    try:
        import torch

        found["torch"] = True
    except ImportError:
        torch = None
    if not cpu or Backend.trt in backends:
        found["torch_cuda"] = torch is not None and torch.cuda.is_available()
        if found["torch_cuda"]:
            found["cuda"] = True
        else:
            gpu = _gpu_info()
            found["cuda"] = not isinstance(gpu, str)
            found["cuda_missing"] = f"{TORCH_MISSING if torch is None else TORCH_NO_CUDA}; {gpu}"
    if Backend.ort in backends:
        try:
            import onnxruntime as ort

            found["onnxruntime"] = True
            found["ort_cuda"] = not cpu and "CUDAExecutionProvider" in ort.get_available_providers()
        except ImportError:
            pass
    if Backend.ov in backends:
        found["openvino"] = openvino_available()
        found["ov_bf16"] = found["openvino"] and cpu and native_bf16()
    if Backend.trt in backends and not cpu:
        found["trt_missing"], found["trt_host"] = _probe_trt()
        found["trt"] = found["trt_host"] is not None
    return Capabilities(**found)


def _probe_trt() -> tuple[str, Any]:
    """``(why not, Host)``: Host is None where TensorRT engines cannot run here."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return TRT_MISSING, None
    probed = tensorrt_host.probe_host()
    if isinstance(probed, list):
        return f"{'; '.join(probed)}: {tensorrt_host.TRT_INSTALL_HINT}", None
    return "", probed[1]


def _gpu_info() -> tuple[str, str] | str:
    """``(name, compute capability)`` from cuda-python, or why there is none."""
    return tensorrt_host.gpu_info()


def engine_unusable(entry: Artifact, host: Any, folder: Path) -> str | None:
    """Why an engine cannot load here (built by another TensorRT or for another GPU), from its manifest facts."""
    facts = entry.engine
    if not facts:
        return None  # no facts to check: the runner finds out when it loads the plan
    try:
        tensorrt_host.check_compatible(facts, host, engine=entry.path, folder=folder)
    except EngineMismatchError as exc:
        return str(exc)
    return None


def cuda_used_mb() -> float | None:
    """Device-wide GPU memory in use (MiB): cuda-python's cudaMemGetInfo, else PyTorch's; None without either."""
    rt = tensorrt_host.cudart()
    if rt is not None:
        with contextlib.suppress(Exception):
            err, free, total = rt.cudaMemGetInfo()
            if err == rt.cudaError_t.cudaSuccess:
                return (total - free) / 2**20
    try:
        import torch

        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    except Exception:  # no torch / no CUDA: GPU memory is not reported
        return None


def gpu_name() -> str | None:
    """The GPU's name from cuda-python (no torch needed, as on a Jetson), else from PyTorch."""
    found = _gpu_info()
    if not isinstance(found, str):
        return found[0]
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return None


# -------------------------------------------------------------------------------------------- host info


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def host_info(options: BenchOptions) -> dict[str, Any]:
    import psutil

    model, flags = _cpuinfo()
    info: dict[str, Any] = {
        "cpu": model, "machine": platform.machine(), "os": f"{platform.system()} {platform.release()}",
        "cores_physical": psutil.cpu_count(logical=False), "cores_logical": psutil.cpu_count(logical=True),
        "cores_available": available_cores(), "threads": options.thread_count,
        "isa": [f for f in ISA_FLAGS if f in flags], "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "device": options.device.value, "denormals": DENORMALS,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": _version("torch"),
                     "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
                     "tensorrt": _version("tensorrt"), "openvino": _version("openvino"),
                     "deploykit": _version("deploykit")},
    }
    if options.device is Device.cuda:
        info["gpu"] = gpu_name()
    return info


def host_line(host: dict[str, Any]) -> str:
    v = host["versions"]
    isa = "/".join(host["isa"]) or "-"
    gpu = f" | GPU {host['gpu']}" if host.get("gpu") else ""
    load = f" | load {host['load_avg_1m']}" if host.get("load_avg_1m") is not None else ""
    return (f"{host['cpu']} | {host['cores_available']} cores, {host['threads']} threads | ISA {isa}{gpu} | "
            f"torch {v['torch']} | onnxruntime {v['onnxruntime']}"
            + (f" | tensorrt {v['tensorrt']}" if v.get("tensorrt") else "")
            + (" | denormals flushed to zero" if host.get("denormals") == DENORMALS else "")
            + (f" | openvino {v['openvino']}" if v.get("openvino") else "") + load)


def contention_warning(host: dict[str, Any]) -> str | None:
    """The warning for a host that was busy as timing started (1-min load >= the cores bench may use), or None;
    its advice leaves out ``--threads 1`` where that was already taken. The CLI prints it; bench's markdown and
    ``report.md`` carry it from ``bench.json``."""
    busy, cores = host.get("load_avg_1m"), host.get("cores_available")
    if not isinstance(busy, (int, float)) or not isinstance(cores, int) or busy < cores:
        return None
    advice = ("rerun when it is quieter" if host.get("threads") == 1 else
              "rerun when it is quieter, or with --threads 1")
    return (f"this host was busy when timing started (1-min load {busy} on {cores} cores): timings are noisy, "
            "PyTorch's most (its threads wait on each other when cores are taken), and rows whose rounds disagree "
            f"are marked unstable; {advice}")
