"""Latency and throughput of every artifact of an export folder, side by side with the PyTorch reference.

How a case is measured (the method trtexec and ``torch.utils.benchmark`` use):

* one input batch is prepared before any timing (real photos through the folder's preprocessing, tiled to the
  batch size); on CUDA it sits in pinned host memory;
* each case loads its model, runs ``warmup`` untimed iterations, then timed iterations, one clock reading
  around each: ``time.perf_counter_ns`` on the CPU, CUDA events plus synchronisation on the GPU;
* PyTorch (``torch.set_num_threads``) and ONNX Runtime (``intra_op_num_threads``, one inter-op thread) get the
  same thread count, all cores by default;
* denormals are flushed to zero in every backend (``torch.set_flush_denormal(True)``, ONNX Runtime's
  ``session.set_denormal_as_zero``): random or badly scaled weights can otherwise drive one backend into
  denormal arithmetic, orders of magnitude slower, and a "speed-up" would measure that, not the graph;
* the step that is timed is the bare call -- ``session.run`` with a feed built beforehand, ``module(x)`` under
  ``inference_mode`` -- so bench adds nothing a hand-written loop would not.

Memory: both frameworks are imported before the first case, then for each case the kernel's peak-RSS counter
is reset (``/proc/self/clear_refs``), the model is loaded and run, and ``VmHWM`` is read back. ``rss_peak_mb``
is the whole process's peak during the case (libraries included); ``rss_delta_mb`` is that peak minus the RSS
before loading: what this backend and precision cost on top of an idle process. Cases run one after the other
and each one's models are freed before the next.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deploykit.errors import DeployKitError, InputError, MissingDependencyError
from deploykit.manifest import ENGINE_SUFFIXES, MANIFEST_NAME, Manifest
from deploykit.parity import Precision

DEFAULT_MODEL = "resnet18"  # what `deploykit bench` with no TARGET measures: seeded weights, 1000 classes, 224x224
DEFAULT_WARMUP = 5
DEFAULT_ITERS = 100
DEFAULT_BUDGET_S = 15.0  # without --iters/--seconds: 100 iterations, or fewer once 15 s have passed
MIN_ITERS = 10  # ... but never fewer than this
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimdhp", "asimddp")
EXPORTS_DIR = Path("exports")  # where `deploykit bench` with no TARGET looks for the latest export folder
DENORMALS = "flush-to-zero"  # the one denormal policy every backend is timed under
ORT_DENORMAL_CONFIG = {"session.set_denormal_as_zero": "1"}


class Backend(str, Enum):
    torch = "torch"
    ort = "ort"
    ov = "ov"  # OpenVINO on the CPU
    trt = "trt"


def default_backends() -> tuple[Backend, ...]:
    """Every backend; OpenVINO only where it is installed (asked for by name without it: a skipped row)."""
    from deploykit.runners.openvino import openvino_available

    return tuple(b for b in Backend if b is not Backend.ov or openvino_available())


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Variant(str, Enum):
    """How a backend ran: the plain form, or one of the extra forms asked for with --torch-variants / TRT."""

    eager = "eager"  # PyTorch, as the model comes
    channels_last = "channels_last"  # PyTorch FP32, NHWC memory format (CPU)
    channels_last_autocast = "channels_last+autocast"  # PyTorch, NHWC + FP16 autocast (CUDA)
    compiled = "compile"  # torch.compile (inductor)
    session = "session"  # ONNX Runtime InferenceSession.run, host arrays in and out
    end_to_end = "end-to-end"  # TensorRT, host-to-device copy + compute + device-to-host copy
    compute = "compute"  # TensorRT, device buffers only (trtexec's "GPU Compute Time")
    ov_f32 = "f32"  # OpenVINO, INFERENCE_PRECISION_HINT=f32 (what the compiled model reports it runs)
    ov_bf16 = "bf16"  # OpenVINO, INFERENCE_PRECISION_HINT=bf16 (native bf16 CPUs; INT8 graphs: the non-INT8 rest)


PLAIN_VARIANTS = (Variant.eager, Variant.session, Variant.ov_f32)  # labels leave these out


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[Backend, ...] = field(default_factory=default_backends)
    precisions: tuple[Precision, ...] = tuple(Precision)
    batches: tuple[int, ...] = (1,)
    device: Device = Device.cpu
    threads: int | None = None  # None: every core this process may run on
    warmup: int = DEFAULT_WARMUP
    iters: int | None = None
    seconds: float | None = None
    torch_variants: bool = False

    def validate(self) -> None:
        if self.iters is not None and self.seconds is not None:
            raise InputError("give --iters or --seconds, not both")
        if self.iters is not None and self.iters < 1:
            raise InputError(f"--iters must be >= 1, got {self.iters}")
        if self.seconds is not None and not self.seconds > 0:
            raise InputError(f"--seconds must be > 0, got {self.seconds}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise InputError(f"--batch sizes must be >= 1, got {','.join(map(str, self.batches)) or 'none'}")
        if not self.backends:
            raise InputError("--backends is empty; choose from torch,ort,ov,trt")
        if not self.precisions:
            raise InputError("--precisions is empty; choose from fp32,fp16,int8,int8-cpu,bf16")

    @property
    def thread_count(self) -> int:
        return self.threads or available_cores()


def parse_list(text: str, kind: type[Enum], flag: str) -> tuple:
    """``"torch, ort"`` -> ``(Backend.torch, Backend.ort)``; unknown names raise one line listing the choices."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            value = kind(item)
        except ValueError:
            choices = ",".join(m.value for m in kind)
            raise InputError(f"{flag}: unknown {item!r}; choose from {choices}") from None
        if value not in out:
            out.append(value)
    return tuple(out)


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        raise InputError(f"--batch must be comma-separated integers, e.g. 1,8,32; got {text!r}") from None
    return values


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples_ms: np.ndarray) -> Latency:
        p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(np.mean(samples_ms)))

    def to_json(self) -> dict[str, float]:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean}


@dataclass
class Measurement:
    backend: Backend
    precision: Precision
    device: Device
    batch: int
    variant: Variant
    latency: Latency
    iters: int
    clock: str
    artifact: str | None = None
    speedup_vs_torch: float | None = None
    rss_peak_mb: float | None = None
    rss_delta_mb: float | None = None
    gpu_mem_mb: float | None = None
    parity: dict[str, Any] | None = None
    note: str | None = None
    ran: dict[str, Any] | None = None  # what the runtime reports it ran (OpenVINO: precision, layer precisions)
    ship: bool = False  # the fastest verified row of its backend, device and batch

    @property
    def throughput(self) -> float:
        """Images per second: batch / p50 latency (runs are back to back, one at a time); the p50, like the
        speed-up, so one table uses one statistic."""
        return self.batch * 1000.0 / max(self.latency.p50, 1e-6)

    @property
    def label(self) -> str:
        plain = self.variant in PLAIN_VARIANTS or self.variant.value == self.precision.value
        return f"{self.backend.value} {self.precision.value}" + ("" if plain else f" {self.variant.value}")

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend.value, "precision": self.precision.value, "device": self.device.value,
                "batch": self.batch, "latency_ms": self.latency.to_json(), "throughput": self.throughput,
                "speedup_vs_torch": self.speedup_vs_torch,
                # extras beside the contract's keys
                "variant": self.variant.value, "iters": self.iters, "clock": self.clock, "artifact": self.artifact,
                "rss_peak_mb": self.rss_peak_mb, "rss_delta_mb": self.rss_delta_mb, "gpu_mem_mb": self.gpu_mem_mb,
                "parity": self.parity, "note": self.note, "ran": self.ran, "ship": self.ship}


@dataclass(frozen=True)
class Skip:
    backend: Backend
    precision: Precision | None
    reason: str
    batch: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend.value, "precision": None if self.precision is None else self.precision.value,
                "batch": self.batch, "reason": self.reason}


@dataclass
class BenchReport:
    host: dict[str, Any]
    results: list[Measurement]
    skipped: list[Skip]
    target: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"host": {...}, "results": [...]}``; the host block also says what was benched and what was skipped."""
        return {"host": {**self.host, "target": self.target, "skipped": [s.to_json() for s in self.skipped]},
                "results": [m.to_json() for m in self.results]}

    @property
    def host_line(self) -> str:
        return host_line(self.host)


# -------------------------------------------------------------------------------------------------- host


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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
        info["gpu"] = _gpu_name()
    return info


def _gpu_name() -> str | None:
    """The GPU's name from cuda-python (no torch needed, as on a Jetson), else from PyTorch."""
    from deploykit.tensorrt.host import gpu_info

    found = gpu_info()
    if not isinstance(found, str):
        return found[0]
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return None


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


# ---------------------------------------------------------------------------------------------- memory


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS before a case is not inflated
    by what earlier cases freed -- and a case cannot hide its own cost by reusing those pages."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def _rss_window() -> Iterator[dict[str, float | None]]:
    _release_freed_memory()
    before = _rss()
    resettable = _reset_peak_rss()
    out: dict[str, float | None] = {"peak": None, "delta": None}
    try:
        yield out
    finally:
        peak = _peak_rss() if resettable else None
        if peak is None:  # no kernel counter: the RSS at the end is a lower bound of the peak
            peak = max(before, _rss())
        out["peak"] = peak / 2**20
        out["delta"] = max(peak - before, 0) / 2**20


# ------------------------------------------------------------------------------------------------ clocks


Step = Callable[[], Any]


def _wall_ms(step: Step) -> float:
    t0 = time.perf_counter_ns()
    step()
    return (time.perf_counter_ns() - t0) / 1e6


def _cuda_events_ms(step: Step) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_loop(step: Step, *, warmup: int, iters: int | None, seconds: float | None,
              clock: Callable[[Step], float] = _wall_ms) -> np.ndarray:
    """Latencies in ms of back-to-back calls of ``step`` after ``warmup`` untimed calls.

    ``iters``: exactly that many; ``seconds``: until that much time has passed (at least one call); neither:
    ``DEFAULT_ITERS`` calls, or fewer (never under ``MIN_ITERS``) once ``DEFAULT_BUDGET_S`` has passed.
    """
    for _ in range(warmup):
        step()
    if iters is not None:
        return np.array([clock(step) for _ in range(iters)])
    samples: list[float] = []
    start = time.perf_counter()
    if seconds is not None:
        while not samples or time.perf_counter() - start < seconds:
            samples.append(clock(step))
        return np.array(samples)
    while len(samples) < DEFAULT_ITERS and (len(samples) < MIN_ITERS or time.perf_counter() - start < DEFAULT_BUDGET_S):
        samples.append(clock(step))
    return np.array(samples)


# ------------------------------------------------------------------------------------------------- cases


@dataclass
class Prepared:
    """A loaded model bound to the benchmark batch: ``step()`` runs one iteration."""

    step: Step
    clock: Callable[[Step], float]
    clock_name: str
    close: Callable[[], None] = lambda: None
    gpu_mem_mb: Callable[[], float | None] = lambda: None
    ran: dict[str, Any] | None = None


class SelfTimed(Protocol):
    """A step that times itself (CUDA events on its own stream) and returns milliseconds."""

    def __call__(self) -> float: ...


class TrtBenchSteps(Protocol):
    """What ``deploykit.runners.trt``'s runner hands bench through ``bench_steps(batch)``: the TensorRT hook.

    ``end_to_end()``: copy the batch from pinned host memory to the device, execute, copy the logits back;
    ``compute()``: execute on device buffers only. Each runs one iteration on the runner's stream, waits for
    it, and returns its time in ms measured with CUDA events (as trtexec reports "Latency" and "GPU Compute
    Time"). ``close()`` frees the buffers.
    """

    def end_to_end(self) -> float: ...

    def compute(self) -> float: ...

    def close(self) -> None: ...


def _self_clock(step: SelfTimed) -> float:
    return step()


@dataclass
class Case:
    backend: Backend
    precision: Precision
    variant: Variant
    batch: int
    prepare: Callable[[np.ndarray], Prepared]
    artifact: str | None = None
    parity: dict[str, Any] | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        plain = self.variant in PLAIN_VARIANTS or self.variant.value == self.precision.value
        return f"{self.backend.value} {self.precision.value}" + ("" if plain else f" {self.variant.value}") + \
            f" b{self.batch}"


def parity_summary(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's parity record of an artifact, flattened for a table row."""
    parity = (entry or {}).get("parity")
    if not parity:
        return None
    metrics = parity.get("metrics") or {}
    keep = ("max_abs_diff", "cosine_min", "top1_agreement", "top5_agreement", "accuracy", "accuracy_drop")
    return {"passed": parity.get("passed"), "reference": parity.get("reference"), "n_images": parity.get("n_images"),
            **{k: metrics[k] for k in keep if k in metrics}}


def _torch_module(folder: Path, manifest: Manifest):
    """The PyTorch model the folder was exported from, or a reason why it cannot be had."""
    from deploykit.files import sha256_file

    if not manifest.source.get("path"):
        return None, f"no {MANIFEST_NAME} beside the ONNX file, so its PyTorch source is unknown"
    source = manifest.source_path()
    if manifest.source_needs():
        return None, ("its source was exported with --allow-pickle/--model-def (code from a file), which a manifest "
                      "cannot grant")
    if source.is_symlink() or not source.is_file():
        return None, f"the source checkpoint {source} is not here"
    if sha256_file(source) != manifest.source.get("sha256"):
        return None, f"{source} changed since export (sha256 differs); re-export"

    def load():
        from deploykit.models.loading import LoadOptions, load_model

        module = load_model(source, LoadOptions.from_dict(manifest.source.get("options", {}))).module
        import torch

        if isinstance(module, torch.export.ExportedProgram):
            module = module.module()
        if hasattr(module, "eval") and not isinstance(module, torch.fx.GraphModule):
            module.eval()
        return module

    return load, None


def _torch_prepare(load_module, device: Device, variant: Variant, threads: int) -> Callable[[np.ndarray], Prepared]:
    def prepare(batch: np.ndarray) -> Prepared:
        import torch

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)  # DENORMALS; bench_folder restores the setting
        module = load_module()
        channels_last = variant in (Variant.channels_last, Variant.channels_last_autocast)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        module = module.to(device.value, memory_format=fmt) if channels_last else module.to(device.value)
        if variant is Variant.compiled:
            module = torch.compile(module)
        autocast = (torch.autocast("cuda", dtype=torch.float16) if variant is Variant.channels_last_autocast
                    else contextlib.nullcontext())
        if device is Device.cpu:
            x = torch.from_numpy(batch).contiguous(memory_format=fmt)

            def step():
                with torch.inference_mode():
                    return module(x)

            clock, clock_name = _wall_ms, "perf_counter"
        else:
            torch.cuda.reset_peak_memory_stats()
            x_host = torch.from_numpy(batch).pin_memory()
            with torch.inference_mode(), autocast:
                out = module(x_host.to("cuda").contiguous(memory_format=fmt))
            out_host = torch.empty(tuple(out.shape), dtype=out.dtype).pin_memory()

            def step():  # pinned host -> device, forward, device -> pinned host: what a caller waits for
                with torch.inference_mode(), autocast:
                    y = module(x_host.to("cuda", non_blocking=True).contiguous(memory_format=fmt))
                    out_host.copy_(y, non_blocking=True)

            clock, clock_name = _cuda_events_ms, "cuda-events"
        if variant is Variant.compiled:
            with torch.inference_mode(), autocast:
                step()  # compile outside the warm-up and the timed loop
        gpu = (lambda: torch.cuda.max_memory_allocated() / 2**20) if device is Device.cuda else (lambda: None)
        return Prepared(step, clock, clock_name, gpu_mem_mb=gpu)

    return prepare


def _ort_prepare(path: Path, device: Device, threads: int) -> Callable[[np.ndarray], Prepared]:
    def prepare(batch: np.ndarray) -> Prepared:
        from deploykit.runners.onnxrt import OnnxRuntimeRunner

        before = _cuda_used_mb() if device is Device.cuda else None
        runner = OnnxRuntimeRunner(path, device=device.value, threads=threads, session_config=ORT_DENORMAL_CONFIG)
        session, outputs, feed = runner.session, [runner.output_name], {runner.input_name: batch}

        def step():  # exactly what a hand-written loop calls
            return session.run(outputs, feed)

        gpu = (lambda: max((_cuda_used_mb() or 0.0) - (before or 0.0), 0.0)) if device is Device.cuda else (lambda: None)
        return Prepared(step, _wall_ms, "perf_counter", gpu_mem_mb=gpu)

    return prepare


def _ov_prepare(path: Path, variant: Variant, threads: int) -> Callable[[np.ndarray], Prepared]:
    def prepare(batch: np.ndarray) -> Prepared:
        from deploykit.runners.openvino import OpenVINORunner

        runner = OpenVINORunner(path, inference_precision=variant.value, threads=threads)
        if runner.inference_precision != variant.value:
            raise DeployKitError(f"OpenVINO was asked for {variant.value} but reports "
                                 f"{runner.inference_precision}: not measured")
        ran = {"runtime": f"openvino {runner.version}", "inference_precision": runner.inference_precision,
               "layer_precisions": runner.layer_precisions, "compile_s": runner.compile_s,
               "loaded_from_cache": runner.loaded_from_cache}
        return Prepared(runner.bench_step(batch), _wall_ms, "perf_counter", ran=ran)

    return prepare


def _ov_unavailable(cpu: bool) -> str | None:
    from deploykit.runners.openvino import OV_INSTALL_HINT, openvino_available

    if not cpu:
        return "deploykit runs OpenVINO on the CPU: use --device cpu"
    return None if openvino_available() else f"OpenVINO is not installed: {OV_INSTALL_HINT}"


def _cuda_used_mb() -> float | None:
    """Device-wide GPU memory in use (MiB): cuda-python's cudaMemGetInfo, else PyTorch's; None without either."""
    from deploykit.tensorrt.host import cudart

    rt = cudart()
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


def _trt_runner_class():
    """The TensorRT runner (``deploykit.runners.trt``), imported only when a TRT case is asked for."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None, "TensorRT is not installed: pip install 'deploykit[trt]' (needs an NVIDIA GPU)"
    try:
        from deploykit.tensorrt import runner as trt_runners
    except ImportError as exc:
        return None, f"deploykit's TensorRT runner is not available ({exc})"
    cls = next((getattr(trt_runners, n) for n in ("TensorRTRunner", "TrtRunner") if hasattr(trt_runners, n)), None)
    if cls is None:
        return None, "deploykit.runners.trt has no TensorRTRunner"
    return cls, None


def _trt_host():
    """``(Host, None)`` where TensorRT engines can run (cuda-python and a GPU), else ``(None, why not)``."""
    from deploykit.tensorrt.host import TRT_INSTALL_HINT, probe_host

    probed = probe_host()
    if isinstance(probed, list):
        return None, f"{'; '.join(probed)}: {TRT_INSTALL_HINT}"
    return probed[1], None


def _engine_unusable(entry: dict[str, Any], host, folder: Path) -> str | None:
    """Why an engine cannot load here (built by another TensorRT or for another GPU), from its manifest facts."""
    from deploykit.errors import EngineMismatchError
    from deploykit.tensorrt.host import check_compatible

    facts = entry.get("engine")
    if not facts:
        return None  # no facts to check: the runner finds out when it loads the plan
    try:
        check_compatible(facts, host, engine=entry["path"], folder=folder)
    except EngineMismatchError as exc:
        return str(exc)
    return None


def _engine_batches(entry: dict[str, Any]) -> tuple[int | None, int | None]:
    """The batch range of an engine's optimization profile, from its manifest facts (None, None: unknown)."""
    profile = (entry.get("engine") or {}).get("profile") or {}
    try:
        return int(profile["min"][0]), int(profile["max"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None, None


def _trt_prepare(runner_cls, path: Path, variant: Variant) -> Callable[[np.ndarray], Prepared]:
    def prepare(batch: np.ndarray) -> Prepared:
        before = _cuda_used_mb()
        runner = runner_cls(path)
        gpu = lambda: max((_cuda_used_mb() or 0.0) - (before or 0.0), 0.0)  # noqa: E731
        hook = getattr(runner, "bench_steps", None)
        if hook is None:  # end-to-end through the runner's own infer(): synchronous, host arrays in and out
            return Prepared(lambda: runner.infer(batch), _wall_ms, "perf_counter", gpu_mem_mb=gpu)
        steps: TrtBenchSteps = hook(batch)
        step = steps.end_to_end if variant is Variant.end_to_end else steps.compute
        return Prepared(step, _self_clock, "cuda-events", close=steps.close, gpu_mem_mb=gpu)

    return prepare


def _fixed_batch(manifest: Manifest) -> int | None:
    shape = manifest.input.get("shape") or [None]
    return shape[0] if isinstance(shape[0], int) and not manifest.input.get("dynamic_batch") else None


def plan_cases(folder: Path, manifest: Manifest, options: BenchOptions,
               only: str | None = None, where: str | None = None) -> tuple[list[Case], list[Skip]]:
    """Every (backend, precision, variant, batch) to measure, and every requested one that cannot run here.

    ``only``: one artifact of the folder (``model.fp16.onnx``, ``model.fp16.engine``): just its backend and
    precision are benched, beside the PyTorch FP32 reference.
    """
    cases: list[Case] = []
    skips: list[Skip] = []
    temporary = where is not None  # an export made on the fly for this bench: advice names no folder
    where = where or f"{folder.name}/"  # how skip reasons name the folder
    threads = options.thread_count
    cpu = options.device is Device.cpu
    fixed = _fixed_batch(manifest)
    # bf16 is OpenVINO's compute precision for model.onnx (no bf16 file): an ov row only
    backends = options.backends
    precisions = {b: tuple(p for p in options.precisions if b is Backend.ov or p is not Precision.BF16)
                  for b in Backend}
    if Precision.BF16 in options.precisions and Backend.ov not in backends and only is None and \
            set(options.precisions) != set(Precision):  # asked for by name, not as part of "everything"
        skips.append(Skip(Backend.ov, Precision.BF16, "bf16 is model.onnx computed in bf16 by OpenVINO: add ov to "
                                                      "--backends"))
    if only is not None:
        entry = manifest.artifact(only)
        if entry is None:
            raise InputError(f"{only} is not listed in {folder / MANIFEST_NAME}")
        kinds = (Backend.trt,) if only.endswith(ENGINE_SUFFIXES) else (Backend.ort, Backend.ov)
        backends = tuple(b for b in options.backends if b is Backend.torch or b in kinds)
        if not any(k in backends for k in kinds):
            raise InputError(f"{only} runs on {kinds[0].value}, which --backends leaves out"
                             + (f", as it does {kinds[1].value}" if len(kinds) > 1 else ""))
        precision = Precision(entry["precision"])
        if precision not in options.precisions:
            raise InputError(f"{only} is {precision.value}, which --precisions leaves out")
        precisions = {Backend.torch: tuple(p for p in options.precisions if p is Precision.FP32),
                      **{k: (precision,) for k in kinds}}
        if precision is Precision.FP32 and Precision.BF16 in options.precisions:
            precisions[Backend.ov] += (Precision.BF16,)

    present = [a for a in manifest.artifacts if (folder / a["path"]).is_file() and (only is None or a["path"] == only)]
    for entry in present:
        manifest.file(entry)  # inside the folder, and the bytes the manifest recorded: else one line to re-export

    def artifact(precision: Precision, suffixes: str | tuple[str, ...]) -> dict | None:
        return next((a for a in present if a.get("precision") == precision.value and a["path"].endswith(suffixes)),
                    None)

    def onnx_entry(precision: Precision) -> dict | None:
        return artifact(precision, ".onnx")

    for backend in backends:
        if backend is Backend.torch:
            try:
                import torch  # noqa: F401
                load, reason = _torch_module(folder, manifest)
            except ImportError:
                load, reason = None, "PyTorch is not installed"
            if load is not None and not cpu:
                reason = _torch_cuda()
                load = None if reason else load
            if load is None:
                skips.append(Skip(backend, None, reason))
                continue
            ref = {"is_reference": True}
            forms: list[tuple[Precision, Variant]] = [(Precision.FP32, Variant.eager)]
            if options.torch_variants:
                if cpu:
                    forms += [(Precision.FP32, Variant.channels_last), (Precision.FP32, Variant.compiled)]
                else:
                    forms += [(Precision.FP16, Variant.channels_last_autocast), (Precision.FP32, Variant.compiled)]
            for precision in precisions[backend]:
                mine = [v for p, v in forms if p is precision]
                if not mine:
                    if precision is Precision.FP16:
                        reason = ("PyTorch FP16 runs on CUDA only, as the channels_last+autocast variant "
                                  "(--device cuda --torch-variants)" if cpu else
                                  "PyTorch FP16 runs as the channels_last+autocast variant: add --torch-variants")
                    else:
                        reason = (f"PyTorch is benched in FP32 (the reference); {precision.value} is an ONNX "
                                  "artifact: see the ort/trt rows")
                    skips.append(Skip(backend, precision, reason))
                for variant in mine:
                    for b in options.batches:
                        cases.append(Case(backend, precision, variant, b,
                                          _torch_prepare(load, options.device, variant, threads),
                                          artifact=Path(manifest.source.get("path", "")).name,
                                          parity=ref if variant is Variant.eager else None))  # variants: unverified
            if options.torch_variants and cpu and Precision.FP16 in precisions[backend]:
                skips.append(Skip(backend, Precision.FP16, "channels_last+FP16 autocast is a CUDA variant; "
                                                           "on CPU bench runs channels_last in FP32"))
        elif backend is Backend.ort:
            try:
                import onnxruntime as ort
            except ImportError:
                skips.append(Skip(backend, None, "ONNX Runtime is not installed: pip install onnxruntime"))
                continue
            if not cpu and "CUDAExecutionProvider" not in ort.get_available_providers():
                skips.append(Skip(backend, None, "this ONNX Runtime has no CUDA provider: pip install onnxruntime-gpu"))
                continue
            for precision in precisions[backend]:
                entry = onnx_entry(precision)
                if entry is None:
                    how = (f"it is exported in FP32 only; bench an export folder made with `deploykit export MODEL "
                           f"{_flags_for(precision)}`" if temporary else _how_to_make(precision))
                    skips.append(Skip(backend, precision, f"no {precision.value} ONNX artifact in {where} ({how})"))
                    continue
                note = None
                if cpu and precision is Precision.FP16:
                    note = ("ORT's CPU provider has few FP16 kernels and runs this graph through casts: "
                            "unrepresentative of FP16 on a GPU (use --device cuda or trt)")
                elif cpu and precision is Precision.INT8:
                    note = ("Q/DQ graph made for TensorRT, emulated by ORT's CPU provider; on a CPU ship int8-cpu "
                            "with ORT, or this file with OpenVINO (the ov int8 row)")
                for b in options.batches:
                    if fixed is not None and b != fixed:
                        skips.append(Skip(backend, precision, f"{entry['path']} has a fixed batch of {fixed}: "
                                                              "re-export with --dynamic-batch", batch=b))
                        continue
                    cases.append(Case(backend, precision, Variant.session, b,
                                      _ort_prepare(folder / entry["path"], options.device, threads),
                                      artifact=entry["path"], parity=parity_summary(entry), note=note))
        elif backend is Backend.ov:
            reason = _ov_unavailable(cpu)
            if reason:
                skips.append(Skip(backend, None, reason))
                continue
            from deploykit.runners.openvino import native_bf16

            bf16 = native_bf16()
            for precision in precisions[backend]:
                if precision is Precision.FP16:
                    skips.append(Skip(backend, precision, "OpenVINO's CPU plugin computes model.fp16.onnx in f32 "
                                                          "(FP16 weights decompressed): see ov fp32 and ov bf16"))
                    continue
                if precision is Precision.BF16 and not bf16:
                    skips.append(Skip(backend, precision, "this CPU has no native bf16 (OpenVINO's CPU capabilities "
                                                          "lack BF16)"))
                    continue
                entry = onnx_entry(Precision.FP32 if precision is Precision.BF16 else precision)
                if entry is None:
                    skips.append(Skip(backend, precision, f"no {precision.value} ONNX artifact in {folder.name}/ "
                                                          f"({_how_to_make(precision)})"))
                    continue
                variants = [Variant.ov_bf16] if precision is Precision.BF16 else [Variant.ov_f32]
                if precision is Precision.INT8 and bf16:
                    variants.append(Variant.ov_bf16)  # integer kernels, the non-INT8 rest in bf16
                for b in options.batches:
                    if fixed is not None and b != fixed:
                        skips.append(Skip(backend, precision, f"{entry['path']} has a fixed batch of {fixed}: "
                                                              "re-export with --dynamic-batch", batch=b))
                        continue
                    for variant in variants:  # parity: verified after timing, on what ran (_verify_ov_rows)
                        cases.append(Case(backend, precision, variant, b,
                                          _ov_prepare(folder / entry["path"], variant, threads),
                                          artifact=entry["path"]))
        elif backend is Backend.trt:
            if cpu:
                skips.append(Skip(backend, None, _trt_on_cpu_advice(None if temporary else folder)))
                continue
            runner_cls, reason = _trt_runner_class()
            host = None
            if runner_cls is not None:
                host, reason = _trt_host()
            if host is None:
                skips.append(Skip(backend, None, reason))
                continue
            for precision in precisions[backend]:
                entry = artifact(precision, ENGINE_SUFFIXES)
                if entry is None:
                    skips.append(Skip(backend, precision, f"no {precision.value} TensorRT engine in {where} "
                                                          "(deploykit export --to trt)"))
                    continue
                unusable = _engine_unusable(entry, host, folder)
                if unusable:
                    skips.append(Skip(backend, precision, unusable))
                    continue
                onnx_twin = onnx_entry(precision)
                has_hook = hasattr(runner_cls, "bench_steps")
                variants = [Variant.end_to_end, Variant.compute] if has_hook else [Variant.end_to_end]
                if not has_hook:
                    skips.append(Skip(backend, precision, "compute-only timing needs the TensorRT runner's "
                                                          "bench_steps() hook, which this build lacks"))
                engine_batch = (entry.get("batch") if isinstance(entry.get("batch"), int) else None)
                lo, hi = _engine_batches(entry)
                for b in options.batches:
                    if engine_batch is not None and b != engine_batch:
                        skips.append(Skip(backend, precision, f"{entry['path']} was built for batch {engine_batch}",
                                          batch=b))
                        continue
                    if lo is not None and not lo <= b <= hi:
                        skips.append(Skip(backend, precision, f"{entry['path']}'s profile takes batches {lo} to {hi}: "
                                                              f"rebuild with --profile MIN:OPT:MAX covering {b}",
                                          batch=b))
                        continue
                    for variant in variants:
                        cases.append(Case(backend, precision, variant, b,
                                          _trt_prepare(runner_cls, folder / entry["path"], variant),
                                          artifact=entry["path"],
                                          parity=parity_summary(entry) or parity_summary(onnx_twin)))
    return cases, skips


def _gpu_here() -> bool:
    """Whether this host has a CUDA GPU (seen by PyTorch, else by cuda-python)."""
    if _torch_cuda() is None:
        return True
    from deploykit.tensorrt.host import gpu_info

    return not isinstance(gpu_info(), str)


def _trt_on_cpu_advice(folder: Path | None) -> str:
    """Why the TensorRT rows of a CPU bench are skipped, and the next step that fits this host (``folder`` None:
    an export made on the fly, which the user cannot copy)."""
    if _gpu_here():
        return "TensorRT runs on NVIDIA GPUs: add --device cuda"
    if folder is None:
        return ("no NVIDIA GPU here: on the device, export with `deploykit export MODEL --to trt` and bench that "
                "folder with --device cuda")
    return (f"no NVIDIA GPU here: build and bench the engine on the device: deploykit build {folder} && "
            f"deploykit bench {folder} --device cuda")


def latest_export(root: Path = EXPORTS_DIR) -> Path | None:
    """The export folder under ``root`` whose deploykit.json was written last (None when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [d for d in root.iterdir() if d.is_dir() and (d / MANIFEST_NAME).is_file()]
    return max(found, key=lambda d: (d / MANIFEST_NAME).stat().st_mtime_ns, default=None)


def default_target(root: Path = EXPORTS_DIR) -> tuple[Path | None, str]:
    """What ``deploykit bench`` with no TARGET measures, and the sentence that says so: the latest export folder
    under ``./exports/``, else (None) the bundled model."""
    latest = latest_export(root)
    if latest is not None:
        return latest, (f"benchmarking {latest}: the most recently written export folder under {root}/ "
                        "(pass TARGET to bench another)")
    return None, (f"benchmarking the bundled {DEFAULT_MODEL} (random weights, 1000 classes, 224x224): there is no "
                  f"export folder under ./{root}/; pass TARGET (an export folder or a model file) to bench yours")


def _flags_for(precision: Precision) -> str:
    return {Precision.FP32: "", Precision.FP16: "--fp16", Precision.INT8: "--int8",
            Precision.INT8_CPU: "--int8-for cpu"}[precision]


def _how_to_make(precision: Precision) -> str:
    return {Precision.FP32: "run deploykit export",
            Precision.FP16: "export with --fp16",
            Precision.INT8: "export with --int8",
            Precision.INT8_CPU: "export with --int8 --int8-for cpu",
            Precision.BF16: "run deploykit export: bf16 is model.onnx computed in bf16"}[precision]


# --------------------------------------------------------------------------------------------- the run


def bench_input(manifest: Manifest, batch: int) -> np.ndarray:
    """A fixed batch of real photos (scikit-image samples) through the folder's preprocessing, tiled to ``batch``."""
    from deploykit.data import sample_images

    pre = manifest.preprocessing
    images = sample_images().sample(min(batch, 8))
    arr = images.load(pre)
    reps = -(-batch // arr.shape[0])
    return np.ascontiguousarray(np.concatenate([arr] * reps)[:batch], dtype=np.float32)


def _pin_threads(threads: int) -> None:
    """Same intra-op thread count for PyTorch as ONNX Runtime gets; import both before any RSS is read."""
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401


def bench_folder(folder: Path, options: BenchOptions, *, progress: Callable[[str, int, int], None] | None = None,
                 target: dict[str, Any] | None = None, only: str | None = None,
                 manifest: Manifest | None = None) -> BenchReport:
    """Measure every requested (backend, precision, batch) of an export folder (``only``: of that one artifact).

    A case that fails with a user-facing error (an engine TensorRT refuses, a batch its profile does not take)
    is listed as skipped with that error; the other cases still run.
    """
    options.validate()
    folder = Path(folder)
    manifest = manifest or Manifest.load(folder)
    if options.device is Device.cuda:
        _require_cuda()
    info = target or {}
    where = ("the bundled model's temporary export" if info.get("bundled") else
             f"the on-the-fly export of {Path(str(info.get('source'))).name}" if info.get("exported") else None)
    cases, skips = plan_cases(folder, manifest, options, only=only, where=where)
    host = host_info(options)
    results: list[Measurement] = []
    restore = None
    with contextlib.suppress(ImportError):
        import torch

        restore = torch.get_num_threads()
    _pin_threads(options.thread_count)
    inputs = {b: bench_input(manifest, b) for b in sorted({c.batch for c in cases})}
    try:
        for i, case in enumerate(cases):
            if progress:
                progress(case.label, i, len(cases))
            try:
                results.append(_measure(case, inputs[case.batch], options))
            except DeployKitError as exc:  # this case only: the rest of the run goes on
                skip = Skip(case.backend, case.precision, str(exc), batch=case.batch)
                if skip not in skips:  # TensorRT's two variants fail alike
                    skips.append(skip)
    finally:
        if restore is not None:
            import torch

            torch.set_num_threads(restore)
            torch.set_flush_denormal(False)  # torch's default, as a library call found it
    _verify_ov_rows(folder, manifest, results, options.thread_count, progress)
    if progress:
        progress("done", len(cases), len(cases))
    _speedups(results)
    _mark_ship(results)
    info = {"folder": str(folder), "arch": manifest.model.get("arch"), "input": manifest.input.get("shape"),
            "num_classes": manifest.model.get("num_classes"), **(target or {})}
    return BenchReport(host, results, skips, info)


def _measure(case: Case, batch: np.ndarray, options: BenchOptions) -> Measurement:
    with _rss_window() as rss:
        prepared = case.prepare(batch)
        try:
            samples = time_loop(prepared.step, warmup=options.warmup, iters=options.iters, seconds=options.seconds,
                                clock=prepared.clock)
            gpu = prepared.gpu_mem_mb()
            clock, ran = prepared.clock_name, prepared.ran
        finally:
            prepared.close()
            del prepared
    return Measurement(case.backend, case.precision, options.device, case.batch, case.variant, Latency.of(samples),
                       len(samples), clock=clock, artifact=case.artifact, rss_peak_mb=rss["peak"],
                       rss_delta_mb=rss["delta"], gpu_mem_mb=gpu, parity=case.parity, note=case.note, ran=ran)


def _verify_ov_rows(folder: Path, manifest: Manifest, results: list[Measurement], threads: int,
                    progress=None) -> None:
    """The parity of what each OpenVINO row ran: its file, compiled again with the same settings (the compiled-model
    cache gives back the same program), against the folder's reference on the verification photos, judged by the
    tolerance of the precision that ran (bf16 rows: bf16). Not the manifest's ONNX Runtime parity."""
    rows = [m for m in results if m.backend is Backend.ov]
    if not rows:
        return
    from deploykit.data import verification_set
    from deploykit.runners.openvino import OpenVINORunner
    from deploykit.verify import compare_runners, reference_runner

    if progress:
        progress(f"verifying {len(rows)} OpenVINO rows", len(results), len(results))
    try:
        images = verification_set(None)
        batch = images.load(manifest.preprocessing)
        fp32 = next((a["path"] for a in manifest.artifacts if a.get("precision") == "fp32"), None)
        if manifest.source.get("path"):
            reference, ref_name = reference_runner(folder, manifest)
        elif fp32 is not None:  # a bare ONNX file without its folder: the FP32 ONNX on ONNX Runtime is the reference
            from deploykit.runners.onnxrt import OnnxRuntimeRunner

            reference, ref_name = OnnxRuntimeRunner(folder / fp32, threads=threads), fp32
        else:
            raise InputError("no reference here (no deploykit.json beside the file)")
        runs = [(m.artifact, m.precision.value, OpenVINORunner(folder / m.artifact, inference_precision=m.variant.value,
                                                              threads=threads)) for m in rows]
        report = compare_runners(reference, runs, batch, reference_name=ref_name, data_name=images.source)
    except DeployKitError as exc:
        for m in rows:
            m.note = "; ".join(filter(None, [m.note, f"not verified: {exc}"]))
        return
    for m, art in zip(rows, report.artifacts):
        keep = ("max_abs_diff", "cosine_min", "top1_agreement", "top5_agreement")
        m.parity = {"passed": art.passed, "reference": report.reference, "n_images": report.n_images,
                    "verified": f"this run (openvino {m.variant.value}, {report.data})",
                    **{k: art.metrics[k] for k in keep}, **({"failures": art.failures} if art.failures else {})}


def _mark_ship(results: list[Measurement]) -> None:
    """Per backend, device and batch: the fastest row whose artifact passed its tolerance ("ship this")."""
    best: dict[tuple, Measurement] = {}
    for m in results:
        if m.backend is Backend.torch or not (m.parity or {}).get("passed"):
            continue
        key = (m.backend, m.device, m.batch)
        if key not in best or m.latency.p50 < best[key].latency.p50:
            best[key] = m
    for m in best.values():
        m.ship = True


def ship_lines(report: BenchReport) -> list[str]:
    """One line per backend, device and batch: the fastest verified artifact, its p50 and its ratio to ORT FP32."""
    ort_fp32 = {(m.device, m.batch): m.latency.p50 for m in report.results
                if m.backend is Backend.ort and m.precision is Precision.FP32}
    out = []
    for m in report.results:
        if not m.ship:
            continue
        ran = f", {m.ran['inference_precision']} hint" if m.ran and m.backend is Backend.ov else ""
        ratio = ort_fp32.get((m.device, m.batch))
        ratio = f", {m.latency.p50 / ratio:.3f}x ORT FP32" if ratio else ""
        out.append(f"ship this on {m.backend.value} ({m.device.value}, batch {m.batch}): {m.artifact} "
                   f"({m.precision.value}{ran}) -- p50 {m.latency.p50:.2f} ms{ratio}; {parity_cell(m.parity)}")
    return out


def _speedups(results: list[Measurement]) -> None:
    """p50 of PyTorch eager FP32 on the same device and batch over each result's p50: a float wherever that row
    was measured, None (JSON null) only without it."""
    base = {(m.device, m.batch): m.latency.p50 for m in results
            if m.backend is Backend.torch and m.precision is Precision.FP32 and m.variant is Variant.eager}
    for m in results:
        ref = base.get((m.device, m.batch))
        # a p50 under the clock's resolution (1 ns) counts as 1 ns: still a finite float, valid JSON
        m.speedup_vs_torch = None if ref is None else float(ref / max(m.latency.p50, 1e-6))


def _torch_cuda() -> str | None:
    """None when PyTorch can run on a CUDA GPU here, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False)"


def _require_cuda() -> None:
    """--device cuda needs a CUDA GPU, seen by PyTorch or, without it (a Jetson image), by cuda-python: only the
    PyTorch rows need torch; ONNX Runtime and TensorRT rows do not."""
    from deploykit.tensorrt.host import gpu_info

    torch_why = _torch_cuda()
    if torch_why is None:
        return
    found = gpu_info()
    if isinstance(found, str):
        raise MissingDependencyError(f"--device cuda: no CUDA GPU is usable here ({torch_why}; {found}); "
                                     "use --device cpu")


def default_model(directory: Path) -> Path:
    """The bundled default: a ResNet-18 (1000 classes, 224x224) with seeded random weights, as a checkpoint.

    Weights do not change speed, and nothing is downloaded; parity numbers still compare ONNX with PyTorch.
    """
    import torch

    from deploykit.models import build_model, get_spec
    from deploykit.models.loading import save_checkpoint

    torch.manual_seed(0)
    spec = get_spec(DEFAULT_MODEL)
    path = Path(directory) / f"{DEFAULT_MODEL}_seed0.pt"
    save_checkpoint(path, build_model(DEFAULT_MODEL, num_classes=1000), arch=DEFAULT_MODEL, num_classes=1000,
                    preprocess=spec.preprocess())
    return path


def bench_artifact(path: Path, options: BenchOptions, *, progress=None) -> BenchReport:
    """One artifact file: its export folder's manifest restricted to it; a bare ``.onnx`` (no manifest beside it)
    runs on ONNX Runtime with the preprocessing deploykit stored in its metadata."""
    folder = path.parent
    if (folder / MANIFEST_NAME).is_file():
        return bench_folder(folder, options, progress=progress, only=path.name,
                            target={"source": str(path), "artifact": path.name})
    if path.suffix != ".onnx":
        raise InputError(f"{path.name} needs the {MANIFEST_NAME} of its export folder beside it; copy the whole "
                         "folder")
    manifest = _manifest_from_onnx(path)
    return bench_folder(folder, options, progress=progress, only=path.name, manifest=manifest,
                        target={"source": str(path), "artifact": path.name, "manifest": "ONNX metadata"})


def _manifest_from_onnx(path: Path) -> Manifest:
    """A stand-in manifest for a bare deploykit ONNX: preprocessing and class names from its metadata, the input
    shape from its graph, the precision from its name (``model.<precision>.onnx``, else fp32)."""
    import onnx

    from deploykit.predict import _onnx_metadata

    pre, names = _onnx_metadata(path)
    if pre is None:
        raise InputError(f"{path.name} has no {MANIFEST_NAME} beside it and no deploykit metadata; bench its export "
                         "folder instead")
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in initializers)
    shape = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    stem = path.name[:-len(".onnx")]
    precision = next((p.value for p in Precision if stem.endswith(f".{p.value}")), Precision.FP32.value)
    return Manifest(source={}, model={"arch": None, "num_classes": None, "class_names": names},
                    input={"name": inp.name, "shape": shape, "dynamic_batch": not isinstance(shape[0], int)},
                    output={}, preprocess=pre.to_dict(), opset=None,
                    artifacts=[{"path": path.name, "precision": precision}], folder=path.parent)


def bench_target(target: Path | None, options: BenchOptions, *, status=None, warn=None, note=None,
                 progress=None) -> BenchReport:
    """Bench an export folder, or a model file exported into a temporary folder first (``None``: the default)."""
    options.validate()
    if target is not None and Path(target).is_dir():
        if not (Path(target) / MANIFEST_NAME).is_file():
            raise InputError(f"{target} is not an export folder (no {MANIFEST_NAME}); pass a model file or "
                             "run `deploykit export` first")
        return bench_folder(Path(target), options, progress=progress, target={"source": str(target)})
    if target is not None and not Path(target).is_file():
        raise InputError(f"{target} not found: pass an export folder or a model file")
    if target is not None and (Path(target).suffix == ".onnx" or Path(target).name.endswith(ENGINE_SUFFIXES)):
        return bench_artifact(Path(target), options, progress=progress)
    from deploykit.pipeline import export_folder

    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        if target is None:
            model = default_model(Path(tmp))
            origin = {"source": f"default model: {DEFAULT_MODEL}, seeded random weights (torch.manual_seed(0))",
                      "bundled": True}
        else:
            model = Path(target)
            origin = {"source": str(target)}
        (status or (lambda m: None))(f"exporting {model.name} to a temporary folder (dynamic batch)")
        from types import SimpleNamespace

        from deploykit.reporter import SILENT

        quiet = SILENT.status
        reporter = SimpleNamespace(status=status or quiet, warn=warn or quiet, note=note or quiet, log=quiet,
                                   progress=SILENT.progress)
        result = export_folder(model, out=Path(tmp) / "export", dynamic_batch=True, verify=True, reporter=reporter)
        if result.report is not None and not result.report.passed and warn:
            warn(f"out of tolerance: {result.report.failure_summary()}")
        folder = result.folder
        del result  # the export's in-memory model would otherwise sit in every RSS reading
        return bench_folder(folder, options, progress=progress, target={**origin, "exported": "on the fly"})


# ---------------------------------------------------------------------------------------------- outputs


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def shape_text(shape) -> str:
    return "x".join("N" if d is None else str(d) for d in shape or [])


def parity_cell(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "-"
    if parity.get("is_reference"):
        return "reference"
    bits = []
    if "top1_agreement" in parity:
        bits.append(f"top1 {parity['top1_agreement']:.3f}")
    if "cosine_min" in parity:
        bits.append(f"cos {parity['cosine_min']:.4f}")
    if "accuracy_drop" in parity:
        bits.append(f"drop {parity['accuracy_drop']:+.2f}")
    verdict = {True: "pass", False: "FAIL"}.get(parity.get("passed"), "")
    return " ".join(bits + [verdict]).strip()


COLUMNS = ("backend", "precision", "variant", "device", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms",
           "img/s (p50)", "vs torch (p50)", "RSS peak MB", "RSS +MB", "GPU MB", "parity")


def rows(report: BenchReport) -> list[list[str]]:
    out = []
    for m in report.results:
        lat = m.latency
        out.append([m.backend.value, m.precision.value, m.variant.value, m.device.value, str(m.batch),
                    f"{lat.p50:.2f}", f"{lat.p90:.2f}", f"{lat.p99:.2f}", f"{lat.mean:.2f}", f"{m.throughput:.1f}",
                    _fmt(m.speedup_vs_torch, ".2f") + ("x" if m.speedup_vs_torch else ""),
                    _fmt(m.rss_peak_mb, ".0f"), _fmt(m.rss_delta_mb, ".0f"), _fmt(m.gpu_mem_mb, ".0f"),
                    parity_cell(m.parity) + (" <- ship this" if m.ship else "")])
    return out


def render_table(report: BenchReport):
    """The rich table; columns that carry nothing on this run (no GPU memory, only plain variants, one device,
    named in the title instead) are left out."""
    from rich.table import Table

    target = report.target
    body = rows(report)
    devices = sorted({m.device.value for m in report.results})
    drop = set()
    if all(r[COLUMNS.index("GPU MB")] == "-" for r in body):
        drop.add("GPU MB")
    if all(m.variant in (Variant.eager, Variant.session) for m in report.results):
        drop.add("variant")
    if len(devices) == 1:
        drop.add("device")
    keep = [i for i, col in enumerate(COLUMNS) if col not in drop]
    on = f" on {devices[0]}" if len(devices) == 1 else ""
    title = f"{model_title(report)} {shape_text(target.get('input'))}{on} -- {report.host_line}"
    table = Table(title=title, title_justify="left",
                  caption="img/s and vs torch both from the p50 latency: img/s = batch / p50, vs torch = "
                          "PyTorch eager FP32 p50 / this p50; parity: as recorded in deploykit.json by "
                          "export/verify (vs PyTorch), ov rows verified in this run", caption_justify="left")
    for i in keep:
        col = COLUMNS[i]
        table.add_column(col, justify="left" if col in ("backend", "precision", "variant", "device",
                                                         "parity") else "right", no_wrap=col != "parity")
    for row in body:
        table.add_row(*[row[i] for i in keep])
    return table


def write_markdown(report: BenchReport, dest: Path) -> Path:
    from deploykit.files import atomic_path

    t = report.target
    lines = [f"# deploykit bench: {t.get('arch') or 'model'}", "",
             f"- host: {report.host_line}",
             f"- model: {t.get('source', t.get('folder'))} (input {shape_text(t.get('input'))}, "
             f"{t.get('num_classes')} classes)",
             f"- iterations: {', '.join(sorted({str(m.iters) for m in report.results})) or '-'} timed per row after "
             "warm-up; latency per batch; img/s and `vs torch` both come from the p50 latency: img/s = batch / p50, "
             "`vs torch` = PyTorch eager FP32 p50 / this p50 (same device and batch)",
             "- RSS peak: the process's peak resident memory while the row loaded and ran its model (libraries "
             "included); RSS +MB: that peak minus the resident memory before loading",
             "- parity: what export/verify recorded for the artifact in deploykit.json (top-1 agreement and lowest "
             "cosine of the logits vs PyTorch, pass/FAIL against the precision's tolerance); ov rows: verified in "
             "this run, as they ran (variant = OpenVINO's inference precision)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i < 4 or i == len(COLUMNS) - 1 else "--:"
                                                              for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    ship = ship_lines(report)
    if ship:
        lines += ["", "Ship this (fastest verified artifact per backend):", ""] + [f"- {line}" for line in ship]
    notes = sorted({f"{m.backend.value} {m.precision.value}: {m.note}" for m in report.results if m.note})
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    if report.skipped:
        lines += ["", "Skipped:", ""] + [f"- {skip_text(s)}" for s in report.skipped]
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return dest


def skip_text(skip: Skip) -> str:
    what = skip.backend.value + (f" {skip.precision.value}" if skip.precision else "") + \
        (f" batch {skip.batch}" if skip.batch is not None else "")
    return f"{what}: {skip.reason}"


def model_title(report: BenchReport) -> str:
    """The model a bench measured, as plot and table titles name it: architecture and where it came from."""
    t = report.target
    arch = t.get("arch") or "model"
    if t.get("bundled"):
        return f"{arch} (bundled, random weights)"
    where = t.get("artifact") or Path(str(t.get("source") or t.get("folder") or "")).name
    return f"{arch} ({where})" if where and where != arch else arch


def write_plot(report: BenchReport, dest: Path) -> Path:
    """Latency per backend/precision at the smallest batch (bar: p50; whisker: p90 to p99, on a log axis when the
    values span more than a decade, so one slow row or outlier cannot flatten the rest), and throughput against
    batch size -- that panel only when more than one batch size was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploykit.files import atomic_path

    if not report.results:
        raise InputError("nothing was measured, so there is nothing to plot (see the skipped list)")
    batches = sorted({m.batch for m in report.results})
    smallest = batches[0]
    at = [m for m in report.results if m.batch == smallest]
    two = len(batches) > 1
    height = max(4.0, 0.55 * len(at) + 1.8)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(13 if two else 8, height), squeeze=False)
    ax_lat = axes[0][0]
    y = np.arange(len(at))[::-1]  # first row on top
    colors = [{"torch": "#ee4c2c", "ort": "#1f77b4", "ov": "#9467bd", "trt": "#76b900"}.get(m.backend.value, "#7f7f7f") for m in at]
    p50 = np.array([m.latency.p50 for m in at])
    p90 = np.array([m.latency.p90 for m in at])
    p99 = np.array([m.latency.p99 for m in at])
    ax_lat.barh(y, p50, color=colors, height=0.6, label="p50")
    ax_lat.errorbar(p50, y, xerr=[np.zeros_like(p50), np.maximum(p99 - p50, 0)], fmt="none", ecolor="black",
                    elinewidth=1, capsize=3, label="p50 to p99")
    ax_lat.scatter(p90, y, marker="|", s=120, color="black", zorder=3, label="p90")
    span = max(p99.max(), p50.max()) / max(p50.min(), 1e-6)
    if span > 10:
        from matplotlib.ticker import NullFormatter

        ax_lat.set_xscale("log")
        ax_lat.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
    ax_lat.set_xlim(right=max(p99.max(), p50.max()) * (3.0 if span > 10 else 1.25))
    for yi, m in zip(y, at):
        p = m.latency.p50
        text = f" {p:.3g} ms" if p < 1000 else f" {p:,.0f} ms"
        if m.speedup_vs_torch and not (m.backend is Backend.torch and m.precision is Precision.FP32
                                       and m.variant is Variant.eager):
            text += f"  {m.speedup_vs_torch:.2f}x vs torch"
        ax_lat.text(max(m.latency.p99, m.latency.p50), yi, text, va="center", fontsize=8)
    ax_lat.set_yticks(y, [m.label for m in at], fontsize=9)
    ax_lat.set_xlabel("latency per batch, ms" + (" (log scale)" if span > 10 else ""))
    ax_lat.set_title(f"latency at batch {smallest} on {at[0].device.value}: bar p50, whisker to p99, | p90",
                     fontsize=9)
    ax_lat.grid(axis="x", alpha=0.3, which="both")
    if two:
        ax_thr = axes[0][1]
        for label in dict.fromkeys(m.label for m in report.results):
            pts = sorted((m.batch, m.throughput) for m in report.results if m.label == label)
            ax_thr.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax_thr.set_xscale("log", base=2)
        ax_thr.set_xticks(batches, [str(b) for b in batches])
        ax_thr.set_xlabel("batch")
        ax_thr.set_ylabel("images / s (batch / p50)")
        ax_thr.set_title("throughput vs batch", fontsize=9)
        ax_thr.legend(fontsize=8)
        ax_thr.grid(alpha=0.3)
    fig.suptitle(f"{model_title(report)}, input {shape_text(report.target.get('input'))}: deploykit bench",
                 fontsize=11, fontweight="bold")
    fig.text(0.5, 0.005, report.host_line, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return dest


__all__ = ["Backend", "BenchOptions", "BenchReport", "Device", "Latency", "Measurement", "Skip", "Variant",
           "bench_folder", "bench_target", "host_line", "parse_batches", "parse_list", "render_table", "time_loop",
           "write_markdown", "write_plot", "TrtBenchSteps", "default_backends", "ship_lines"]
