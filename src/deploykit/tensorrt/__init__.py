"""TensorRT: host probing (``host``), the engine vocabulary (``profile``), the build plan (``plan``), the build
steps (``build``, with ``build_progress`` and ``build_errors``) and the offline operator-table check (``check``,
with ``targets`` and ``check_rules``). The runner is ``deploykit.runners.tensorrt``: this package imports no runner.

Importing this package imports nothing heavy: neither ``tensorrt`` nor ``cuda`` (each module imports them inside
the function that needs them), nor its own submodules until a name is asked for (PEP 562 ``__getattr__``), so
``from deploykit.tensorrt import build_engine`` costs what ``deploykit.tensorrt.build`` costs, no more.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "host": ("Host", "MIN_TENSORRT", "TRT_INSTALL_HINT", "cache_dir", "check_compatible", "cuda_check", "cuda_handle",
             "cudart", "default_timing_cache", "engine_host", "gpu_info", "import_tensorrt", "is_jetson",
             "missing_message", "parse_version", "probe_host", "require_host", "trt_logger"),
    "profile": ("DEFAULT_PROFILE", "BatchProfile", "EnginePrecision", "build_command", "engine_name",
                "resolve_profile"),
    "plan": ("BuildPlan", "BuilderFlag", "NetworkFlag", "Typing", "plan_build"),
    "build_progress": ("PhaseProgress",),
    "build": ("EngineResult", "build_engine"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
