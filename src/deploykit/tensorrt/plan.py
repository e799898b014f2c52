"""How one engine is built on one TensorRT version (:func:`plan_build`): strongly typed on TensorRT >= 10.12 and
11.x (precision from the graph, no precision flag), builder flags on older 10.x, never both; and the two steps
that apply a plan to TensorRT's objects. Pure but for those two, which take the ``tensorrt`` module as an
argument (a fake one in the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from deploykit.tensorrt.host import as_version, check_tensorrt_version
from deploykit.tensorrt.profile import EnginePrecision
from deploykit.tensorrt.targets import STRONG_TYPING_SINCE


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


def plan_build(tensorrt_version: str | tuple[int, ...], precision: EnginePrecision, *,
               fp16_remainder: bool = False) -> BuildPlan:
    """Strongly typed on TensorRT >= 10.12 (and 11.x, where it is the only mode); weakly typed with the
    FP16 / INT8 builder flag before that. Never both: a strongly typed network rejects precision flags.

    FP32 engines clear TF32 (on by default) so that "fp32" is FP32 and meets the FP32 parity tolerance.
    A weakly typed INT8 build sets INT8 and, when ``fp16_remainder`` (the graph's non-INT8 part is FP16: the
    manifest's ``"remainder": "fp16"``), FP16 too, so TensorRT may pick FP16 kernels for it; an FP32 remainder
    (or an export from before the remainder was recorded) gets INT8 alone.
    """
    version = check_tensorrt_version(as_version(tensorrt_version))
    precision = EnginePrecision(precision)
    clear = (BuilderFlag.TF32,) if precision is EnginePrecision.fp32 else ()
    if version[:2] >= STRONG_TYPING_SINCE:
        return BuildPlan(Typing.strong, (NetworkFlag.STRONGLY_TYPED,), (), clear)
    flags = {EnginePrecision.fp32: (), EnginePrecision.fp16: (BuilderFlag.FP16,),
             EnginePrecision.int8: (BuilderFlag.INT8, BuilderFlag.FP16) if fp16_remainder else (BuilderFlag.INT8,),
             }[precision]
    return BuildPlan(Typing.weak, (), flags, clear)


def network_creation_flags(trt, plan: BuildPlan) -> int:
    """The ``create_network`` bit mask for ``plan``; a flag this TensorRT lacks is left out (TensorRT 11 may drop
    STRONGLY_TYPED: every network is strongly typed there)."""
    flags = 0
    for flag in plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, flag.value, None)
        if member is not None:
            flags |= 1 << int(member)
    return flags


def set_builder_flags(trt, config, plan: BuildPlan) -> None:
    """Set the plan's builder flags (each must exist) and clear the ones to clear (where they exist)."""
    for flag in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag.value))
    for flag in plan.clear_flags:
        member = getattr(trt.BuilderFlag, flag.value, None)
        if member is not None:
            config.clear_flag(member)
