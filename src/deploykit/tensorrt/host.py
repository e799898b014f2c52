"""The host an engine is built for or runs on: TensorRT, cuda-python, the GPU, Jetson; and whether an engine fits it.

Everything here imports TensorRT and cuda-python lazily, inside the function that needs them. Probing is a
function of its loaders (:func:`probe_host` takes ``load_tensorrt`` / ``load_cudart``), and the callers take the
probe itself (``probe=``), so a test hands in a fake host instead of patching module attributes.

TensorRT plans are tied to the exact TensorRT version (unless built version-compatible, which deploykit does not
do) and to the GPU's compute capability: :func:`check_compatible` reads an engine's facts from ``deploykit.json``
and refuses, in one line with the rebuild command, before anything is deserialized.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from deploykit.messages import SILENT, Reporter
from deploykit.errors import EngineMismatchError, EngineRuntimeError, MissingDependencyError
from deploykit.tensorrt.profile import BatchProfile, EnginePrecision, build_command

MIN_TENSORRT = (10, 0)  # name-based I/O tensors, execute_async_v3, IProgressMonitor
TRT_INSTALL_HINT = ('pip install "deploykit[trt]" on a CUDA host ("deploykit[trt-cu12]" for CUDA 12 drivers); on '
                    "a Jetson use JetPack's TensorRT Python bindings (apt install python3-libnvinfer) plus a "
                    'cuda-python matching its CUDA (pip install "cuda-python>=12,<13" on JetPack 6)')


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; the leading numeric parts only."""
    parts = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def as_version(version: str | tuple[int, ...]) -> tuple[int, ...]:
    return parse_version(version) if isinstance(version, str) else tuple(version)


def check_tensorrt_version(version: str | tuple[int, ...]) -> tuple[int, ...]:
    """The parsed version; MissingDependencyError (exit 3) for a TensorRT older than :data:`MIN_TENSORRT`."""
    version = as_version(version)
    if version[:2] < MIN_TENSORRT:
        raise MissingDependencyError(f"TensorRT {'.'.join(map(str, version))} is too old: deploykit needs "
                                     f"TensorRT >= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} ({TRT_INSTALL_HINT})")
    return version


# ------------------------------------------------------------------------------------------- the host


@dataclass(frozen=True)
class Host:
    """The TensorRT and GPU an engine is built for or loaded on."""

    tensorrt: str
    gpu: str
    compute_capability: str  # "8.7"

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt} on {self.gpu} ({self.sm})"


# (tensorrt module, Host) where engines can be built and run, else the sentences saying what is missing
Probed = Union[tuple[Any, Host], list[str]]
Probe = Callable[[], Probed]


def import_tensorrt():
    """The ``tensorrt`` module, or None where it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def cudart():
    """``cuda.bindings.runtime`` (cuda-python >= 12.6), or the older ``cuda.cudart`` of cuda-python 12.0-12.5
    (cuda-bindings 13.0 release notes: "The trampoline modules cuda.{cuda,cudart,nvrtc} are now removed")."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # cuda-python < 12.6
        return runtime
    except ImportError:
        return None


def cuda_check(result, *, runtime=None):
    """cuda-python calls return ``(err, *values)``; raise :class:`EngineRuntimeError` on an error and return the
    value(s)."""
    rt = runtime or cudart()
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        detail = rt.cudaGetErrorString(err)[1]
        detail = detail.decode() if isinstance(detail, bytes) else str(detail)
        raise EngineRuntimeError(f"CUDA error {name}: {detail}")
    return values[0] if len(values) == 1 else values


def cuda_handle(obj) -> int:
    """The integer address of a cuda-python handle (a stream), as TensorRT takes it (``get_cuda_native_handle``
    from cuda-bindings 13, ``int()`` before)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
        return int(get_cuda_native_handle(obj))
    except (ImportError, TypeError):
        return int(obj)


def gpu_info(device: int = 0, *, load_cudart: Callable[[], Any] = cudart) -> tuple[str, str] | str:
    """``(name, "major.minor")`` of CUDA device ``device``, or a sentence saying why there is none."""
    rt = load_cudart()
    if rt is None:
        return "the CUDA Python bindings (cuda-python) are not installed"
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or not count:
        why = getattr(err, "name", str(err)) if err != rt.cudaError_t.cudaSuccess else "0 devices"
        return f"no CUDA GPU is visible ({why})"
    err, prop = rt.cudaGetDeviceProperties(device)
    if err != rt.cudaError_t.cudaSuccess:
        return f"CUDA device {device} cannot be queried ({getattr(err, 'name', err)})"
    name = prop.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return str(name).strip(), f"{prop.major}.{prop.minor}"


def probe_host(*, load_tensorrt: Callable[[], Any] = import_tensorrt,
               load_cudart: Callable[[], Any] = cudart) -> Probed:
    """``(tensorrt module, Host)`` when TensorRT and a CUDA GPU are here, else the list of what is missing."""
    missing = []
    trt = load_tensorrt()
    if trt is None:
        missing.append("TensorRT's Python bindings (import tensorrt) are not installed")
    gpu = gpu_info(load_cudart=load_cudart)
    if isinstance(gpu, str):
        missing.append(gpu)
    if missing:
        return missing
    return trt, Host(tensorrt=trt.__version__, gpu=gpu[0], compute_capability=gpu[1])


def is_jetson() -> bool:
    """True on NVIDIA Jetson (L4T) boards."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    with contextlib.suppress(OSError):
        return b"nvidia,tegra" in Path("/proc/device-tree/compatible").read_bytes()
    return False


# ------------------------------------------------------------------------------ requiring a usable host


def missing_message(missing: list[str], folder: Path, precisions, *, done: str | None = None,
                    profile: BatchProfile | None = None, workspace_gib: float | None = None) -> str:
    """The one line printed (exit code 3) when no engine can be built here: what is missing, how to get it,
    and the exact command(s) to run on the target."""
    if isinstance(precisions, (str, EnginePrecision)):
        precisions = [precisions]
    head = f"{done}; " if done else ""
    commands = " && ".join(build_command(folder, p, profile, workspace_gib) for p in precisions)
    return (f"{head}no TensorRT engine built: {'; '.join(missing)}. Get them with {TRT_INSTALL_HINT}. "
            f"Then, on the target device, run: {commands}")


def require_host(folder: Path, precisions, *, done: str | None = None, profile: BatchProfile | None = None,
                 workspace_gib: float | None = None, probe: Probe = probe_host) -> tuple[Any, Host]:
    """``(tensorrt, Host)`` to build on, or MissingDependencyError (exit 3) with :func:`missing_message`."""
    probed = probe()
    if isinstance(probed, list):
        if isinstance(precisions, (str, EnginePrecision)):
            precisions = [precisions]
        lines = [f"{done + '; ' if done else ''}no TensorRT engine built: {'; '.join(probed)}.",
                 f"Get them with {TRT_INSTALL_HINT}.", "Then, on the target device, run:",
                 *(f"  {build_command(folder, p, profile, workspace_gib)}" for p in precisions)]
        raise MissingDependencyError(missing_message(probed, folder, precisions, done=done, profile=profile,
                                                     workspace_gib=workspace_gib), lines)
    trt, host = probed
    check_tensorrt_version(host.tensorrt)  # too old a TensorRT fails here, before any work
    return trt, host


def engine_host(what: str = "cannot run TensorRT engines", *, probe: Probe = probe_host) -> tuple[Any, Host]:
    """``(tensorrt module, Host)`` to run engines on; MissingDependencyError (exit 3) saying what is missing."""
    probed = probe()
    if isinstance(probed, list):
        raise MissingDependencyError(f"{what}: {'; '.join(probed)}. Get them with {TRT_INSTALL_HINT}")
    return probed


def check_compatible(facts: dict[str, Any], here: Host, *, engine: str, folder: Path | None = None,
                     reporter: Reporter = SILENT) -> None:
    """Raise :class:`EngineMismatchError` when ``engine`` (with manifest ``facts``) cannot run ``here``.

    Another GPU model of the same compute capability runs it but TensorRT does not recommend it: that only warns.
    """
    built_trt = str(facts.get("tensorrt", ""))
    built_cc = str(facts.get("compute_capability", ""))
    built_gpu = str(facts.get("gpu", ""))
    precision = facts.get("precision", "fp32")
    rebuild = f"rebuild it here: deploykit build {shlex.quote(str(folder or '.'))} --precision {precision}"
    if parse_version(built_trt)[:3] != parse_version(here.tensorrt)[:3]:
        raise EngineMismatchError(f"{engine} was built by TensorRT {built_trt or '?'} and this is TensorRT "
                                  f"{here.tensorrt}; engines only load in the TensorRT version that built "
                                  f"them: {rebuild}")
    if built_cc and built_cc != here.compute_capability:
        raise EngineMismatchError(f"{engine} was built for {built_gpu or 'a GPU'} (compute capability "
                                  f"{built_cc}) and this GPU is {here.gpu} ({here.compute_capability}); "
                                  f"engines are tied to the GPU: {rebuild}")
    if built_gpu and built_gpu != here.gpu:
        reporter.warn(f"{engine} was built on {built_gpu}, this is {here.gpu} (same compute capability "
             f"{here.compute_capability}): it runs, but tactics were timed on the other GPU; rebuild for best speed")


# ------------------------------------------------------------------------------------ the TensorRT logger


_LOGGERS: dict[Any, Any] = {}  # tensorrt module -> its logger


def trt_logger(trt):
    """The process's TensorRT logger, one per ``tensorrt`` module (TensorRT keeps the first one it is given): it
    collects errors and warnings (``.errors``, ``.warnings``; ``.reset()`` before each build or load) for the
    one-line messages. Public, so that the builder and the runner share it."""
    logger = _LOGGERS.get(trt)
    if logger is None:
        class CollectingLogger(trt.ILogger):  # Python API "ILogger": subclass, call the base __init__
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(str(msg))
                elif int(severity) == int(trt.ILogger.Severity.WARNING):
                    self.warnings.append(str(msg))

            def reset(self):
                self.errors.clear()
                self.warnings.clear()

        logger = _LOGGERS[trt] = CollectingLogger()
    return logger


# ------------------------------------------------------------------------------------------ cache dir


def cache_dir() -> Path:
    """``$DEPLOYKIT_CACHE_DIR``, else the user cache dir (platformdirs when installed, else XDG / ~/.cache)."""
    env = os.environ.get("DEPLOYKIT_CACHE_DIR")
    if env:
        return Path(env)
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "deploykit"
    return Path(platformdirs.user_cache_dir("deploykit"))


def default_timing_cache(host: Host) -> Path:
    """One timing cache per TensorRT version and GPU: a cache from another version or device is not reused."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", host.gpu).strip("-").lower() or "gpu"
    version = ".".join(map(str, parse_version(host.tensorrt)[:3]))
    return cache_dir() / "timing" / f"trt{version}-{gpu}-{host.sm}.cache"
