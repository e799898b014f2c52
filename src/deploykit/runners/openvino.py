"""OpenVINO runner: an export folder's ONNX on the CPU with OpenVINO, behind the same ``infer(batch) -> logits``.

It reads ``model.onnx``, ``model.fp16.onnx`` and the symmetric Q/DQ ``model.int8.onnx`` written for TensorRT,
which OpenVINO runs with integer kernels (u8/i8 convolutions). ``model.int8-cpu.onnx`` (ONNX Runtime's
QOperator graph with com.microsoft ops) is not readable by OpenVINO's ONNX frontend: a one-line error says so.

Compute precision: on CPUs with native bf16 (AVX512_BF16, AMX) OpenVINO computes an "FP32" model in bf16 unless
told otherwise. This runner always sets ``INFERENCE_PRECISION_HINT`` (f32 unless bf16 is asked for) and reads back
what the compiled model runs (``inference_precision``), and which precisions its convolution/matmul layers run
in (``layer_precisions``), so callers can say what ran and judge it by that precision's tolerance.

Threads as the ONNX Runtime runner: ``INFERENCE_NUM_THREADS`` = ``threads`` (all cores by default), one stream
(``NUM_STREAMS=1``, ``PERFORMANCE_HINT=LATENCY``), threads not pinned to cores (see ``compile_config``). Compiled models are cached (OpenVINO's ``CACHE_DIR``) under
the user cache dir, so a second start skips compilation; the cache key includes the file's sha256 because
OpenVINO keys a model read from a path by the path alone (a re-exported ``model.onnx`` at the same path would
otherwise load the old compiled model: docs/bench.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from deploykit.errors import InputError, MissingDependencyError
from deploykit.files import user_cache_dir
from deploykit.manifest import content_sha256
from deploykit.runners.base import Opened, Runner

OV_INSTALL_HINT = "pip install 'deploykit[openvino]'"
PRECISIONS = ("f32", "bf16")  # INFERENCE_PRECISION_HINT values deploykit asks for
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution")


def _ov():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(f"OpenVINO is not installed: {OV_INSTALL_HINT}") from None
    return openvino


def ov_version() -> str | None:
    """The installed openvino distribution's version (``2026.4.1``), None without it."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def openvino_available() -> bool:
    """Whether ``import openvino`` would work, without importing it."""
    from importlib.util import find_spec

    return find_spec("openvino") is not None


_CORE = None


def core():
    """One ``openvino.Core`` per process (it holds the plugin; creating more costs time and memory)."""
    global _CORE
    if _CORE is None:
        _CORE = _ov().Core()
    return _CORE


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` lists ``BF16``)."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def model_cache_dir(path: Path, root: Path | None = None) -> Path | None:
    """OpenVINO's ``CACHE_DIR`` for this file: ``<root>/openvino/<path key>/<file identity>``; older identities of
    the same path are removed. None when the folder cannot be created (then nothing is cached)."""
    path = Path(path).resolve()
    by_path = (Path(root) if root is not None else user_cache_dir()) / "openvino" / \
        hashlib.sha256(str(path).encode()).hexdigest()[:16]
    identity = content_sha256(path)[:32]  # the bytes, not size/mtime/inode (a file replaced in place keeps those)
    folder = by_path / identity
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in by_path.iterdir():
            if old.name != identity:
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return None
    return folder


def compile_config(inference_precision: str, threads: int, cache_dir: Path | None = None) -> dict:
    """OpenVINO CPU settings deploykit compiles with: the precision always explicit, ``threads`` inference threads
    in one stream for latency, and no thread pinning -- as ONNX Runtime's intra-op threads, which are not pinned
    either (pinned threads cannot move away from a core another process is busy on: docs/bench.md)."""
    config: dict = {"INFERENCE_PRECISION_HINT": inference_precision, "INFERENCE_NUM_THREADS": threads,
                    "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                    # denormals flushed to zero, as bench does for PyTorch and ONNX Runtime (one policy per table)
                    "CPU_DENORMALS_OPTIMIZATION": True}
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def _first_lines(exc: Exception) -> str:
    """OpenVINO's exception text is a stack of ``Exception from src/...`` lines: keep what says why."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if ln.startswith(("-- No conversion rule", "-- Conversion is failed"))]
    if keep:
        return "unsupported operations (" + "; ".join(ln.lstrip("- ") for ln in keep) + ")"
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check ", "FrontEnd API failed"))]
    return (useful or lines or ["unknown error"])[0]


class OpenVINORunner(Runner):
    """``path``: an ONNX file (or OpenVINO IR ``.xml``). ``inference_precision``: ``f32`` or ``bf16`` (the CPU must
    have native bf16). ``cache``: a folder for compiled models, None for deploykit's user cache dir, False for none.
    """

    name = "openvino"
    compiled, request, input_shape, fixed_batch = Opened(), Opened(), Opened(), Opened()
    # what activate() read back: seconds to compile, the cache folder, whether the cache served it, the version, and
    # the precision the compiled model computes in (an ov.Type name: "f32", "bf16", "f16")
    compile_s, cache_dir, loaded_from_cache, version, inference_precision = (Opened(), Opened(), Opened(), Opened(),
                                                                             Opened())

    def __init__(self, path: Path, *, inference_precision: str = "f32", threads: int | None = None,
                 cache: Path | None | bool = None) -> None:
        if inference_precision not in PRECISIONS:
            raise InputError(f"OpenVINO inference precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {inference_precision!r}")
        self.path, self.hint, self.cache = Path(path), inference_precision, cache
        self.threads = threads or os.cpu_count() or 1

    def _activate(self) -> None:
        _ov()
        path, cache = self.path, self.cache
        if not path.is_file():
            raise InputError(f"model file not found: {path}")
        if self.hint == "bf16" and not native_bf16():
            raise MissingDependencyError("this CPU has no native bf16 (OpenVINO's CPU capabilities lack BF16): "
                                         "run in f32")
        cache_dir = None if cache is False else model_cache_dir(path, None if cache in (None, True) else cache)
        config = compile_config(self.hint, self.threads, cache_dir)
        start = time.perf_counter()
        try:
            self.compiled = core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            if cache_dir is not None and not any(cache_dir.iterdir()):
                cache_dir.rmdir()
            hint = ("; that is ONNX Runtime's CPU graph: on OpenVINO run model.int8.onnx"
                    if path.name.endswith(".int8-cpu.onnx") else "")
            raise InputError(f"OpenVINO {ov_version()} cannot read {path.name}: {_first_lines(exc)}{hint}") from None
        self.compile_s = time.perf_counter() - start
        self.cache_dir, self.version = cache_dir, ov_version()
        self.loaded_from_cache = bool(cache_dir is not None and self.compiled.get_property("LOADED_FROM_CACHE"))
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if len(self.compiled.inputs) != 1:
            raise InputError(f"{path.name} has {len(self.compiled.inputs)} inputs; deploykit runs classifiers with "
                             "one image input")
        shape = self.compiled.input(0).get_partial_shape()
        if shape.rank.is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
            raise InputError(f"{path.name} has a dynamic image size ({shape}); export with a fixed C x H x W")
        self.input_shape = tuple(d.get_length() for d in list(shape)[1:])
        self.fixed_batch = None if shape[0].is_dynamic else shape[0].get_length()
        self.request = self.compiled.create_infer_request()

    @property
    def layer_precisions(self) -> dict[str, int]:
        """How many convolution/matmul layers of the compiled model run in each precision, e.g.
        ``{"u8": 53, "i8": 1}`` for an INT8 ResNet-50 (integer kernels), ``{"bf16": 54}`` in bf16."""
        counts: Counter[str] = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in COMPUTE_LAYERS and "runtimePrecision" in info:
                counts[info["runtimePrecision"].astype(str)] += 1
        return dict(counts)

    @property
    def runs_int8(self) -> bool:
        return any(p in ("u8", "i8") for p in self.layer_precisions)

    @property
    def precision_text(self) -> str:
        """What ran, in words: ``f32``, ``bf16``, ``int8 + f32`` (integer kernels, the rest in f32)."""
        return f"int8 + {self.inference_precision}" if self.runs_int8 else self.inference_precision

    def _release(self) -> None:
        self.request = self.compiled = None  # OpenVINO frees the compiled model with its last reference

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: batch})
        return np.array(out[0], dtype=np.float32, copy=True)


__all__ = ["OV_INSTALL_HINT", "OpenVINORunner", "compile_config", "core", "model_cache_dir", "native_bf16", "openvino_available",
           "ov_version", "user_cache_dir"]
