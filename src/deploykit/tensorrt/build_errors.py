"""Why a TensorRT build returned no plan, in one line: out of GPU memory (an error, or tactics skipped for lack of
memory) with the smaller command to run, else TensorRT's first error (:func:`build_failure`)."""

from __future__ import annotations

import re
from pathlib import Path

from deploykit.errors import EngineBuildError
from deploykit.tensorrt.profile import BatchProfile, EnginePrecision, build_command, engine_name


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


def build_failure(errors: list[str], warnings: list[str], *, tensorrt: str, folder: Path,
                  precision: EnginePrecision, profile: BatchProfile,
                  workspace_gib: float | None) -> EngineBuildError:
    """The one-line error for a build that returned no plan: out of memory (with the smaller command), or
    TensorRT's first error."""
    name = engine_name(precision)
    if is_out_of_memory(errors, warnings):
        return EngineBuildError(oom_message(name, workspace_gib, folder, precision, profile))
    first = errors[0] if errors else "no error message from TensorRT"
    return EngineBuildError(f"TensorRT {tensorrt} could not build {name}: {first}")
