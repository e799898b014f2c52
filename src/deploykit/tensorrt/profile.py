"""What an engine is, before any TensorRT is involved: its precision, its file name, its batch profile, and the
``deploykit build`` command that makes it. Pure Python: host probing and the build both read these.

A dynamic batch dimension gets one ``IOptimizationProfile`` (``builder.create_optimization_profile()``,
``profile.set_shape(name, min, opt, max)``, ``config.add_optimization_profile(profile)``; Python API
"IOptimizationProfile"); :class:`BatchProfile` is its ``MIN:OPT:MAX``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from deploykit.errors import EngineBuildError, InputError
from deploykit.manifest import Manifest


class EnginePrecision(str, Enum):
    """Precisions an engine is built in; each maps to the ONNX artifact that carries it."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def engine_name(precision: EnginePrecision) -> str:
    return f"model.{EnginePrecision(precision).value}.engine"


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


def input_profile(shape: tuple[int, ...], profile: BatchProfile, onnx: str) -> tuple[tuple[int, ...], bool]:
    """``(chw, needs an optimization profile)`` for the parsed network's input ``shape`` (``-1`` = dynamic).

    Only the batch may be dynamic; a fixed batch must be the profile's (re-export with --dynamic-batch otherwise).
    """
    shape = tuple(int(d) for d in shape)
    chw = shape[1:]
    if any(d < 0 for d in chw):
        raise EngineBuildError(f"{onnx} has dynamic dimensions besides the batch: {shape}")
    if shape[0] < 0:
        return chw, True
    if not profile.is_fixed or profile.min != shape[0]:
        raise InputError(f"{onnx} has a fixed batch of {shape[0]}; re-export with --dynamic-batch to "
                         f"build the profile {profile}")
    return chw, False


def build_command(folder: Path, precision: EnginePrecision, profile: BatchProfile | None = None,
                  workspace_gib: float | None = None) -> str:
    """The ``deploykit build`` line that makes this engine (defaults left out), shell-quoted."""
    parts = ["deploykit", "build", str(folder), "--precision", EnginePrecision(precision).value]
    if profile is not None and not profile.is_fixed and profile != DEFAULT_PROFILE:
        parts += ["--profile", str(profile)]
    if workspace_gib is not None:
        parts += ["--workspace", f"{workspace_gib:g}"]
    return " ".join(shlex.quote(p) for p in parts)
