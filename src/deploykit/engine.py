"""ONNX -> TensorRT engine, built on the machine that will run it (TensorRT is imported lazily).

What a build does, and the NVIDIA documents each step follows:

* **Typing.** TensorRT >= 10.12 and every 11.x parse the ONNX *strongly typed*
  (``builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))``): the precision
  lives in the graph -- FP16 tensors with FP32 I/O in ``model.fp16.onnx``, symmetric INT8 Q/DQ in
  ``model.int8.onnx`` -- and no precision builder flag is set ("Migrating from TensorRT 10.x to 11.x",
  "Python Migration Patterns for TensorRT 11.x: Migrating from Weak Typing to Strong Typing"; the 11.x
  "Removed Python APIs" table lists ``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` as removed). Older 10.x
  (JetPack 6 ships 10.3; NVIDIA calls strong typing fully available from 10.12) parse the *same* ONNX weakly
  typed (``create_network(0)``) with ``BuilderFlag.FP16`` or ``BuilderFlag.INT8`` -- the "Before (TensorRT
  10.x)" half of that migration page. Never both: :func:`plan_build` decides, and is unit tested.
* **Batch profile.** A dynamic batch dimension gets one ``IOptimizationProfile`` (``builder.
  create_optimization_profile()``, ``profile.set_shape(name, min, opt, max)``, ``config.
  add_optimization_profile(profile)``; Python API "IOptimizationProfile").
* **Workspace.** ``config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)`` (Python API
  "IBuilderConfig"); a build that runs out of memory says to lower ``--workspace``.
* **Timing cache.** ``config.create_timing_cache(bytes)`` + ``config.set_timing_cache(cache,
  ignore_mismatch=False)`` before the build, ``config.get_timing_cache().serialize()`` after (Python API
  "ITimingCache"); one file per TensorRT version and GPU under the user cache dir, reused by every build.
* **Progress.** A ``trt.IProgressMonitor`` subclass on ``config.progress_monitor`` (Python API
  "IProgressMonitor", NVIDIA's ``samples/python/simple_progress_monitor``).
* **The plan.** ``builder.build_serialized_network(network, config)`` is written as is: a plain serialized
  plan that ``trtexec --loadEngine`` and the C++ runtime load unchanged. Its facts (TensorRT version, GPU,
  compute capability, precision, typing, profile, build seconds, calibration-set hash) go to the
  ``deploykit.json`` sidecar, which the runner checks against the running TensorRT and GPU before it
  deserializes anything (:func:`check_compatible`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from deploykit.errors import DeployKitError, InputError, MissingDependencyError
from deploykit.files import atomic_path, sha256_file
from deploykit.manifest import ENGINE_SUFFIXES, Manifest

STRONG_TYPING_SINCE = (10, 12)  # NVIDIA: strong typing fully available from 10.12 (deprecates weak typing)
MIN_TENSORRT = (10, 0)  # name-based I/O tensors, execute_async_v3, IProgressMonitor
TRT_INSTALL_HINT = ('pip install "deploykit[trt]" on a CUDA host ("deploykit[trt-cu12]" for CUDA 12 drivers); on '
                    "a Jetson use JetPack's TensorRT Python bindings (apt install python3-libnvinfer) plus a "
                    'cuda-python matching its CUDA (pip install "cuda-python>=12,<13" on JetPack 6)')


class EnginePrecision(str, Enum):
    """Precisions an engine is built in; each maps to the ONNX artifact that carries it."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Typing(str, Enum):
    strong = "strong"  # STRONGLY_TYPED network: precision from the graph, no precision flags
    weak = "weak"  # TensorRT < 10.12: precision flags on the builder config


class NetworkFlag(str, Enum):
    """``trt.NetworkDefinitionCreationFlag`` members deploykit sets (value = the TensorRT name)."""

    STRONGLY_TYPED = "STRONGLY_TYPED"


class BuilderFlag(str, Enum):
    """``trt.BuilderFlag`` members deploykit sets or clears (value = the TensorRT name)."""

    FP16 = "FP16"
    INT8 = "INT8"
    TF32 = "TF32"


class EngineBuildError(DeployKitError):
    """TensorRT could not parse the ONNX or build the engine."""


class EngineMismatchError(DeployKitError):
    """An engine was built by another TensorRT version or for another GPU than the one here."""


def engine_name(precision: EnginePrecision) -> str:
    return f"model.{EnginePrecision(precision).value}.engine"


def is_engine(path: str | Path) -> bool:
    return str(path).endswith(ENGINE_SUFFIXES)


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; the leading numeric parts only."""
    parts = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


# ------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class BatchProfile:
    """The batch range of an engine's optimization profile: ``min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 1:
            raise InputError(f"batch profile {self}: MIN must be >= 1")
        if not self.min <= self.opt <= self.max:
            raise InputError(f"batch profile {self}: need MIN <= OPT <= MAX")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"1:8:32"`` (MIN:OPT:MAX) or ``"8"`` (fixed at 8)."""
        parts = [p.strip() for p in str(text).split(":")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise InputError(f"a batch profile takes MIN:OPT:MAX batch sizes, e.g. 1:8:32; got {text!r}")
        return cls(*values)

    @classmethod
    def fixed(cls, batch: int) -> BatchProfile:
        return cls(batch, batch, batch)

    @property
    def is_fixed(self) -> bool:
        return self.min == self.max

    def shapes(self, chw: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        chw = tuple(int(d) for d in chw)
        return (self.min, *chw), (self.opt, *chw), (self.max, *chw)

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def to_dict(self, input_name: str, chw: tuple[int, ...]) -> dict[str, Any]:
        lo, opt, hi = self.shapes(chw)
        return {"input": input_name, "min": list(lo), "opt": list(opt), "max": list(hi)}


DEFAULT_PROFILE = BatchProfile(1, 8, 32)


def resolve_profile(manifest: Manifest, requested: BatchProfile | None) -> BatchProfile:
    """The profile to build: the ONNX's fixed batch, or ``requested`` (default 1:8:32) for a dynamic batch."""
    shape = manifest.input.get("shape") or [None]
    dynamic = bool(manifest.input.get("dynamic_batch")) or not isinstance(shape[0], int)
    if not dynamic:
        fixed = BatchProfile.fixed(int(shape[0]))
        if requested is not None and requested != fixed:
            raise InputError(f"the ONNX in this folder has a fixed batch of {shape[0]}, so the engine does too; "
                             f"re-export with --dynamic-batch to build the profile {requested}")
        return fixed
    return requested or DEFAULT_PROFILE


# ---------------------------------------------------------------------------------------- build plan


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built on one TensorRT version: typing, network flags, builder flags set and cleared."""

    typing: Typing
    network_flags: tuple[NetworkFlag, ...]
    set_flags: tuple[BuilderFlag, ...]
    clear_flags: tuple[BuilderFlag, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"typing": self.typing.value, "network_flags": [f.value for f in self.network_flags],
                "builder_flags": [f.value for f in self.set_flags],
                "cleared_flags": [f.value for f in self.clear_flags]}


def plan_build(tensorrt_version: str | tuple[int, ...], precision: EnginePrecision) -> BuildPlan:
    """Strongly typed on TensorRT >= 10.12 (and 11.x, where it is the only mode); weakly typed with the
    FP16 / INT8 builder flag before that. Never both: a strongly typed network rejects precision flags.

    FP32 engines clear TF32 (on by default) so that "fp32" is FP32 and meets the FP32 parity tolerance.
    The INT8 graph keeps its non-quantized layers in FP32, so the weakly typed INT8 build sets INT8 alone.
    """
    version = parse_version(tensorrt_version) if isinstance(tensorrt_version, str) else tuple(tensorrt_version)
    if version[:2] < MIN_TENSORRT:
        raise MissingDependencyError(f"TensorRT {'.'.join(map(str, version))} is too old: deploykit needs "
                                     f"TensorRT >= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} ({TRT_INSTALL_HINT})")
    precision = EnginePrecision(precision)
    clear = (BuilderFlag.TF32,) if precision is EnginePrecision.fp32 else ()
    if version[:2] >= STRONG_TYPING_SINCE:
        return BuildPlan(Typing.strong, (NetworkFlag.STRONGLY_TYPED,), (), clear)
    flags = {EnginePrecision.fp32: (), EnginePrecision.fp16: (BuilderFlag.FP16,),
             EnginePrecision.int8: (BuilderFlag.INT8,)}[precision]
    return BuildPlan(Typing.weak, (), flags, clear)


# ------------------------------------------------------------------------------------- host & compat


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


def check_compatible(facts: dict[str, Any], here: Host, *, engine: str, folder: Path | None = None,
                     warn: Callable[[str], None] | None = None) -> None:
    """Raise :class:`EngineMismatchError` when ``engine`` (with manifest ``facts``) cannot run ``here``.

    TensorRT plans are tied to the exact TensorRT version (unless built version-compatible, which deploykit
    does not do) and to the GPU's compute capability; another GPU model of the same compute capability runs
    it but TensorRT does not recommend it, so that only warns.
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
    if built_gpu and built_gpu != here.gpu and warn:
        warn(f"{engine} was built on {built_gpu}, this is {here.gpu} (same compute capability "
             f"{here.compute_capability}): it runs, but tactics were timed on the other GPU; rebuild for best speed")


def _trt():
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


def cuda_check(result):
    """cuda-python calls return ``(err, *values)``; raise on an error and return the value(s)."""
    rt = cudart()
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        detail = rt.cudaGetErrorString(err)[1]
        detail = detail.decode() if isinstance(detail, bytes) else str(detail)
        raise EngineBuildError(f"CUDA error {name}: {detail}")
    return values[0] if len(values) == 1 else values


def gpu_info(device: int = 0) -> tuple[str, str] | str:
    """``(name, "major.minor")`` of CUDA device ``device``, or a sentence saying why there is none."""
    rt = cudart()
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


def probe_host() -> tuple[Any, Host] | list[str]:
    """``(tensorrt module, Host)`` when TensorRT and a CUDA GPU are here, else the list of what is missing."""
    missing = []
    trt = _trt()
    if trt is None:
        missing.append("TensorRT's Python bindings (import tensorrt) are not installed")
    gpu = gpu_info()
    if isinstance(gpu, str):
        missing.append(gpu)
    if missing:
        return missing
    return trt, Host(tensorrt=trt.__version__, gpu=gpu[0], compute_capability=gpu[1])


def build_command(folder: Path, precision: EnginePrecision, profile: BatchProfile | None = None,
                  workspace_gib: float | None = None) -> str:
    parts = ["deploykit", "build", str(folder), "--precision", EnginePrecision(precision).value]
    if profile is not None and not profile.is_fixed and profile != DEFAULT_PROFILE:
        parts += ["--profile", str(profile)]
    if workspace_gib is not None:
        parts += ["--workspace", f"{workspace_gib:g}"]
    return " ".join(shlex.quote(p) for p in parts)


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
                 workspace_gib: float | None = None) -> tuple[Any, Host]:
    """``(tensorrt, Host)``, or MissingDependencyError (exit 3) with :func:`missing_message`."""
    probed = probe_host()
    if isinstance(probed, list):
        raise MissingDependencyError(missing_message(probed, folder, precisions, done=done, profile=profile,
                                                     workspace_gib=workspace_gib))
    trt, host = probed
    plan_build(host.tensorrt, EnginePrecision.fp32)  # too old a TensorRT fails here, before any work
    return trt, host


# ------------------------------------------------------------------------------------- timing cache


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


# -------------------------------------------------------------------------------------- OOM message

_OOM_PATTERNS = ("out of memory", "outofmemory", "cudaerrormemoryallocation", "insufficient memory",
                 "requested amount of gpu memory", "failed to allocate", "could not allocate", "allocation failed",
                 "cuda_error_out_of_memory", "not enough memory")
# TensorRT's *warnings* when tactics do not fit: "Tactic Device request: 1234MB Available: 512MB. Device memory is
# insufficient to use tactic.", "Skipping tactic 3 due to insufficient memory on requested size of ..." (also
# spelled "insuficient" by some releases). With every tactic of a layer skipped, the build then fails with
# "Could not find any implementation for node ...": on a Jetson that is an out-of-memory build.
_TACTIC_MEMORY = re.compile(r"memory is insuf+icient|insuf+icient (device |gpu |host )?memory|device request: .*"
                            r"available:|not enough (device |gpu )?memory", re.IGNORECASE)
_NO_IMPLEMENTATION = "could not find any implementation"


def is_out_of_memory(errors: list[str], warnings: list[str] = ()) -> bool:
    """Whether a failed build ran out of GPU memory: an out-of-memory error, or tactics skipped for lack of
    memory (warnings) followed by no error at all or TensorRT's "Could not find any implementation"."""
    text = " ".join(errors).lower()
    if any(p in text for p in _OOM_PATTERNS):
        return True
    starved = any(_TACTIC_MEMORY.search(w) for w in warnings)
    return starved and (not errors or _NO_IMPLEMENTATION in text)


def oom_message(engine: str, workspace_gib: float | None, folder: Path, precision: EnginePrecision,
                profile: BatchProfile) -> str:
    smaller = max((workspace_gib or 2.0) / 2, 0.25)
    lower = (f" or a smaller batch profile (e.g. --profile {profile.min}:{max(profile.min, profile.opt // 2)}:"
             f"{max(profile.min, profile.max // 2)})" if not profile.is_fixed else "")
    ws = f"a {workspace_gib:g} GiB workspace" if workspace_gib else "TensorRT's default workspace (all free memory)"
    return (f"TensorRT ran out of GPU memory building {engine} with {ws}: re-run with a smaller workspace"
            f"{lower}, e.g. {build_command(folder, precision, profile, smaller)}; on a Jetson also close other "
            "GPU programs and add swap")


# ------------------------------------------------------------------------------------------- build


@dataclass
class EngineResult:
    path: Path
    entry: dict[str, Any]
    facts: dict[str, Any]
    notes: list[str] = field(default_factory=list)


ProgressCallback = Callable[[str, int, int], None]  # (phase, steps done, steps in phase)


def _logger(trt):
    """One TensorRT logger for the process (TensorRT keeps the first one it is given), collecting errors."""
    global _LOGGER
    if _LOGGER is None:
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

        _LOGGER = CollectingLogger()
    return _LOGGER


_LOGGER = None


def _progress_monitor(trt, callback: ProgressCallback):
    """A ``trt.IProgressMonitor`` forwarding TensorRT's build phases to ``callback``.

    TensorRT calls it from its own threads; it must return True from ``step_complete`` to keep building
    (returning False cancels the build), so any exception in the callback is swallowed here.
    """

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = int(num_steps)
            with contextlib.suppress(Exception):
                callback(phase_name, 0, int(num_steps))

        def step_complete(self, phase_name, step):
            with contextlib.suppress(Exception):
                callback(phase_name, int(step) + 1, self.steps.get(phase_name, int(step) + 1))
            return True

        def phase_finish(self, phase_name):
            total = self.steps.pop(phase_name, 1)
            with contextlib.suppress(Exception):
                callback(phase_name, total, total)

    return Monitor()


def onnx_entry(manifest: Manifest, precision: EnginePrecision, folder: Path) -> dict[str, Any]:
    precision = EnginePrecision(precision)
    entry = next((a for a in manifest.artifacts if a.get("precision") == precision.value
                  and a["path"].endswith(".onnx")), None)
    how = {EnginePrecision.fp32: "deploykit export", EnginePrecision.fp16: "deploykit export ... --fp16",
           EnginePrecision.int8: "deploykit export ... --int8 --calib DIR"}[precision]
    if entry is None:
        raise InputError(f"{folder} has no {precision.value} ONNX to build from; export it first ({how})")
    manifest.file(entry)  # a plain file inside the folder with the recorded sha256, else one line to re-export
    return entry


def calibration_hash(manifest: Manifest, folder: Path) -> str | None:
    """The INT8 calibration set's hash: the key of the calibration cache (image bytes, preprocessing, method
    and model), as the precision stage recorded it."""
    int8 = next((a for a in manifest.artifacts if a.get("precision") == "int8" and a["path"].endswith(".onnx")),
                None)
    cache = (((int8 or {}).get("details") or {}).get("calibration") or {}).get("cache")
    if not cache:
        return None
    path = folder / cache
    if path.is_file():
        try:
            return json.loads(path.read_text()).get("key")
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            pass
    match = re.search(r"-([0-9a-f]{16})\.json$", cache)  # calib-<method>-<key[:16]>.json
    return match.group(1) if match else None


def build_engine(folder: Path, precision: EnginePrecision, *, profile: BatchProfile | None = None,
                 workspace_gib: float | None = None, timing_cache: Path | None = None,
                 progress: ProgressCallback | None = None, status: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] | None = None, done: str | None = None) -> EngineResult:
    """Build ``model.<precision>.engine`` from the folder's ONNX of that precision; record it in the manifest.

    Raises MissingDependencyError (exit 3) with the command to run on the target when TensorRT or a GPU is
    missing here; ``done`` prefixes that message with what was already written.
    """
    folder = Path(folder)
    precision = EnginePrecision(precision)
    step = status or (lambda msg: None)
    if workspace_gib is not None and not workspace_gib > 0:
        raise InputError(f"--workspace is in GiB and must be > 0, got {workspace_gib:g}")
    from deploykit.folder import folder_lock

    with folder_lock(folder, "build"):  # one writer of the folder's manifest at a time
        return _build_engine(folder, precision, profile=profile, workspace_gib=workspace_gib,
                             timing_cache=timing_cache, progress=progress, step=step, warn=warn, done=done)


def _build_engine(folder: Path, precision: EnginePrecision, *, profile, workspace_gib, timing_cache, progress,
                  step, warn, done) -> EngineResult:
    manifest = Manifest.load(folder)
    entry = onnx_entry(manifest, precision, folder)
    profile = resolve_profile(manifest, profile)
    trt, host = require_host(folder, precision, done=done, profile=profile, workspace_gib=workspace_gib)
    plan = plan_build(host.tensorrt, precision)
    logger = _logger(trt)
    logger.reset()
    name = engine_name(precision)
    notes: list[str] = []

    builder = trt.Builder(logger)
    flags = 0
    for flag in plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, flag.value, None)
        if member is not None:  # TensorRT 11 may drop the flag: every network is strongly typed there
            flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = manifest.file(entry)
    step(f"parsing {entry['path']} ({plan.typing.value}ly typed, TensorRT {host.tensorrt})")
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise EngineBuildError(f"TensorRT {host.tensorrt} cannot parse {entry['path']}: "
                               f"{errors[0] if errors else 'unknown error'}" +
                               (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    if network.num_inputs != 1:
        raise EngineBuildError(f"{entry['path']} has {network.num_inputs} inputs; deploykit engines take one image batch")

    config = builder.create_builder_config()
    for flag in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag.value))
    for flag in plan.clear_flags:
        member = getattr(trt.BuilderFlag, flag.value, None)
        if member is not None:
            config.clear_flag(member)
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))

    inp = network.get_input(0)
    shape = tuple(int(d) for d in inp.shape)
    chw = shape[1:]
    if any(d < 0 for d in chw):
        raise EngineBuildError(f"{entry['path']} has dynamic dimensions besides the batch: {shape}")
    if shape[0] < 0:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(inp.name, *profile.shapes(chw))
        config.add_optimization_profile(opt_profile)
    elif not profile.is_fixed or profile.min != shape[0]:
        raise InputError(f"{entry['path']} has a fixed batch of {shape[0]}; re-export with --dynamic-batch to "
                         f"build the profile {profile}")

    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(host)
    cache_blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    reused = bool(cache_blob)
    if cache is None or not config.set_timing_cache(cache, False):
        if warn:
            warn(f"timing cache {cache_path} does not fit TensorRT {host.tensorrt} on {host.gpu}; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        reused = False

    monitor = None
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        monitor = _progress_monitor(trt, progress)
        config.progress_monitor = monitor  # must outlive every TensorRT object using it: held until we return

    step(f"building {name} (profile {profile}, {plan.typing.value} typing"
         + (f", flags {'+'.join(f.value for f in plan.set_flags)}" if plan.set_flags else "") + ")")
    started = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    except MemoryError:
        serialized = None
        logger.errors.append("out of memory")
    seconds = time.perf_counter() - started
    if serialized is None:
        if is_out_of_memory(logger.errors, logger.warnings):
            raise EngineBuildError(oom_message(name, workspace_gib, folder, precision, profile))
        first = logger.errors[0] if logger.errors else "no error message from TensorRT"
        raise EngineBuildError(f"TensorRT {host.tensorrt} could not build {name}: {first}")

    dest = folder / name
    with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        handle.write(serialized)  # the plain serialized plan, nothing prepended
    try:
        with atomic_path(cache_path) as tmp, open(tmp, "wb") as handle:
            handle.write(config.get_timing_cache().serialize())
    except (OSError, DeployKitError) as exc:
        notes.append(f"timing cache not saved to {cache_path}: {exc}")

    facts = {
        "tensorrt": host.tensorrt, "gpu": host.gpu, "compute_capability": host.compute_capability,
        "precision": precision.value, **plan.to_dict(),
        "profile": profile.to_dict(inp.name, chw), "workspace_gib": workspace_gib,
        "build_seconds": round(seconds, 2),
        "timing_cache": {"path": str(cache_path), "reused": reused},
        "onnx": {"path": entry["path"], "sha256": entry.get("sha256")},
        "calibration_sha256": calibration_hash(manifest, folder) if precision is EnginePrecision.int8 else None,
        "platform": {"machine": platform.machine(), "jetson": is_jetson()},
    }
    record = {"path": name, "precision": precision.value, "sha256": sha256_file(dest),
              "bytes": dest.stat().st_size, "parity": None, "engine": facts}
    if profile.is_fixed:
        record["batch"] = profile.min
    manifest.set_artifact(record)
    manifest.save(folder)
    return EngineResult(dest, record, facts, notes)


def is_jetson() -> bool:
    """True on NVIDIA Jetson (L4T) boards."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    with contextlib.suppress(OSError):
        return b"nvidia,tegra" in Path("/proc/device-tree/compatible").read_bytes()
    return False


@contextlib.contextmanager
def rich_build_progress(console=None) -> Iterator[ProgressCallback]:
    """A transient rich progress bar fed by TensorRT's IProgressMonitor phases (one row per phase)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from deploykit.cli.progress import progress_bar  # plain lines where stderr is a log or a pipe

    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    with progress_bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=max(total, 1))
            bar.update(tasks[phase], completed=min(done, max(total, 1)), total=max(total, 1))

        yield update
