"""ONNX -> TensorRT engine, built on the machine that will run it, in small named steps (Polygraphy's loaders):

    plan_build -> network_from_onnx_path -> create_config -> add_batch_profile -> load_timing_cache
               -> engine_from_network -> save_engine / save_timing_cache -> record_engine

:func:`build_engine` runs them for one export folder and precision. The decisions are pure functions of the
TensorRT version and the folder (:func:`~deploykit.tensorrt.plan.plan_build`,
:func:`~deploykit.tensorrt.profile.input_profile`, :func:`engine_facts`,
:func:`~deploykit.tensorrt.build_errors.build_failure`) and are unit tested without a GPU; the steps that call
TensorRT take the ``tensorrt`` module as an argument, so they run against a fake one too. The build phases reach
the reporter through :mod:`deploykit.tensorrt.build_progress`.

What each step follows -- strong typing on TensorRT >= 10.12 and 11.x (precision from the graph, no precision
flag), builder flags on older 10.x, never both; one batch profile; the workspace limit; a timing cache per
TensorRT version and GPU; one progress task per build phase; the plain serialized plan plus its facts in the
``deploykit.json`` sidecar, checked before anything is deserialized -- and the TensorRT documentation each follows:
docs/precision.md, "Building the TensorRT engine".
"""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.errors import DeployKitError, EngineBuildError, InputError
from deploykit.files import atomic_path, sha256_file
from deploykit.folder import folder_lock
from deploykit.manifest import Artifact, Manifest
from deploykit.messages import SILENT, Reporter
from deploykit.tensorrt.build_errors import build_failure
from deploykit.tensorrt.build_progress import PhaseProgress, progress_monitor
from deploykit.tensorrt.check import build_refusal
from deploykit.tensorrt.host import Host, Probe, default_timing_cache, is_jetson, probe_host, require_host, trt_logger
from deploykit.tensorrt.plan import BuildPlan, network_creation_flags, plan_build, set_builder_flags
from deploykit.tensorrt.profile import BatchProfile, EnginePrecision, engine_name, input_profile, resolve_profile


@dataclass
class ParsedNetwork:
    """The builder, the network and the parser that filled it (the parser owns the weights: keep it alive)."""

    builder: Any
    network: Any
    parser: Any


def network_from_onnx_path(trt, logger, onnx_path: Path, plan: BuildPlan, *, onnx: str,
                           tensorrt: str) -> ParsedNetwork:
    """Parse the ONNX file into a network typed as ``plan`` says; ``onnx`` names it in messages."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise EngineBuildError(f"TensorRT {tensorrt} cannot parse {onnx}: "
                               f"{errors[0] if errors else 'unknown error'}" +
                               (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    if network.num_inputs != 1:
        raise EngineBuildError(f"{onnx} has {network.num_inputs} inputs; deploykit engines take one image batch")
    return ParsedNetwork(builder, network, parser)


def workspace_bytes(workspace_gib: float) -> int:
    return int(workspace_gib * (1 << 30))


def create_config(trt, builder, plan: BuildPlan, *, workspace_gib: float | None = None):
    """A builder config with the plan's flags and, when asked, a workspace limit."""
    config = builder.create_builder_config()
    set_builder_flags(trt, config, plan)
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(workspace_gib))
    return config


def add_batch_profile(builder, network, config, profile: BatchProfile, *, onnx: str) -> tuple[str, tuple[int, ...]]:
    """Add the optimization profile a dynamic batch needs; ``(input name, chw)`` of the network's input."""
    inp = network.get_input(0)
    chw, dynamic = input_profile(tuple(inp.shape), profile, onnx)
    if dynamic:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(inp.name, *profile.shapes(chw))
        config.add_optimization_profile(opt_profile)
    return inp.name, chw


def load_timing_cache(config, path: Path, host: Host, reporter: Reporter = SILENT) -> bool:
    """Start from the timing cache at ``path`` (a missing file: an empty cache); True when one was reused.
    A cache TensorRT rejects (another version or GPU) is replaced by an empty one, with a warning."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return bool(blob)
    reporter.warn(f"timing cache {path} does not fit TensorRT {host.tensorrt} on {host.gpu}; starting a new one")
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return False


def engine_from_network(trt, parsed: ParsedNetwork, config, logger, *,
                        reporter: Reporter = SILENT) -> tuple[bytes | None, float]:
    """``(serialized plan or None when the build failed, seconds)``; the logger holds TensorRT's reasons."""
    phases = PhaseProgress(reporter)
    if reporter is not SILENT and hasattr(trt, "IProgressMonitor"):
        monitor = progress_monitor(trt, phases)
        config.progress_monitor = monitor  # must outlive every TensorRT object using it: held until we return
    started = time.perf_counter()
    try:
        serialized = parsed.builder.build_serialized_network(parsed.network, config)
    except MemoryError:
        serialized = None
        logger.errors.append("out of memory")
    finally:
        phases.close()
    return serialized, time.perf_counter() - started


def save_engine(dest: Path, serialized) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        handle.write(serialized)  # the plain serialized plan, nothing prepended


def save_timing_cache(config, path: Path) -> str | None:
    """Write the config's timing cache to ``path``; a note saying why not when it cannot be written."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(config.get_timing_cache().serialize())
    except (OSError, DeployKitError) as exc:
        return f"timing cache not saved to {path}: {exc}"
    return None


# ------------------------------------------------------------------------------------- the record


def onnx_entry(manifest: Manifest, precision: EnginePrecision, folder: Path) -> Artifact:
    precision = EnginePrecision(precision)
    entry = manifest.find(precision=precision.value, kind="onnx")
    how = {EnginePrecision.fp32: "deploykit export", EnginePrecision.fp16: "deploykit export ... --fp16",
           EnginePrecision.int8: "deploykit export ... --int8 --calib DIR"}[precision]
    if entry is None:
        raise InputError(f"{folder} has no {precision.value} ONNX to build from; export it first ({how})")
    manifest.file(entry)  # a plain file inside the folder with the recorded sha256, else one line to re-export
    return entry


def onnx_remainder(entry: Artifact) -> str | None:
    """The precision of the non-INT8 part of an INT8 ONNX, as the precision stage recorded it ("fp16" /
    "fp32"); None for other precisions and for exports from before it was recorded (their remainder is FP32)."""
    return entry.remainder if entry.precision == "int8" else None


def calibration_hash(manifest: Manifest, folder: Path) -> str | None:
    """The INT8 calibration set's hash: the key of the calibration cache (image bytes, preprocessing, method
    and model), as the precision stage recorded it."""
    int8 = manifest.find(precision="int8", kind="onnx")
    cache = (((int8.details if int8 is not None else None) or {}).get("calibration") or {}).get("cache")
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


def engine_facts(host: Host, precision: EnginePrecision, plan: BuildPlan, profile: BatchProfile, *, input_name: str,
                 chw: tuple[int, ...], workspace_gib: float | None, seconds: float, timing_cache: Path,
                 reused: bool, onnx: Artifact, calibration_sha256: str | None) -> dict[str, Any]:
    """The engine's facts for ``deploykit.json`` (the ``engine`` key of its artifact record)."""
    return {
        "tensorrt": host.tensorrt, "gpu": host.gpu, "compute_capability": host.compute_capability,
        "precision": EnginePrecision(precision).value, **plan.to_dict(),
        "profile": profile.to_dict(input_name, chw), "workspace_gib": workspace_gib,
        "build_seconds": round(seconds, 2),
        "timing_cache": {"path": str(timing_cache), "reused": reused},
        "onnx": {"path": onnx.path, "sha256": onnx.sha256},
        "calibration_sha256": calibration_sha256,
        "platform": {"machine": platform.machine(), "jetson": is_jetson()},
    }


def record_engine(manifest: Manifest, folder: Path, dest: Path, facts: dict[str, Any],
                  profile: BatchProfile) -> Artifact:
    """List the written engine in the folder's manifest (hash, size, facts) and save it; the record."""
    record = {"path": dest.name, "precision": facts["precision"], "sha256": sha256_file(dest),
              "bytes": dest.stat().st_size, "parity": None, "engine": facts}
    if profile.is_fixed:
        record["batch"] = profile.min
    entry = manifest.set_artifact(record)
    manifest.save(folder)
    return entry


# ------------------------------------------------------------------------------------------ the build


@dataclass
class EngineResult:
    path: Path
    entry: Artifact
    facts: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def build_engine(folder: Path, precision: EnginePrecision, *, profile: BatchProfile | None = None,
                 workspace_gib: float | None = None, timing_cache: Path | None = None,
                 reporter: Reporter = SILENT, done: str | None = None, probe: Probe = probe_host,
                 trt_check: bool = True) -> EngineResult:
    """Build ``model.<precision>.engine`` from the folder's ONNX of that precision; record it in the manifest.

    Raises MissingDependencyError (exit 3) with the command to run on the target when TensorRT or a GPU is
    missing here (``probe`` says; ``done`` prefixes that message with what was already written),
    EngineBuildError when TensorRT cannot parse or build, or -- before the builder, unless ``trt_check`` is
    False -- when the installed version's operator table says it will not (:mod:`deploykit.tensorrt.check`).
    Steps go to ``reporter.status``, the build phases to ``reporter.progress``.
    """
    folder = Path(folder)
    precision = EnginePrecision(precision)
    check_workspace(workspace_gib)
    with folder_lock(folder, "build"):  # one writer of the folder's manifest at a time
        return build_in_locked_folder(folder, precision, profile=profile, workspace_gib=workspace_gib,
                             timing_cache=timing_cache, reporter=reporter, done=done, probe=probe,
                             trt_check=trt_check)


def check_workspace(workspace_gib: float | None) -> None:
    """``--workspace`` is checked before the folder is locked (a usage error, exit 2)."""
    if workspace_gib is not None and not workspace_gib > 0:
        raise InputError(f"--workspace is in GiB and must be > 0, got {workspace_gib:g}")


def build_in_locked_folder(folder: Path, precision: EnginePrecision, *, profile: BatchProfile | None,
                           workspace_gib: float | None, timing_cache: Path | None, reporter: Reporter,
                           done: str | None, probe: Probe, trt_check: bool = True) -> EngineResult:
    """:func:`build_engine`'s steps for a caller that already holds the folder lock (``pipeline.build_folder``)."""
    manifest = Manifest.load(folder)
    entry = onnx_entry(manifest, precision, folder)
    profile = resolve_profile(manifest, profile)
    trt, host = require_host(folder, precision, done=done, profile=profile, workspace_gib=workspace_gib,
                             probe=probe)
    plan = plan_build(host.tensorrt, precision, fp16_remainder=onnx_remainder(entry) == "fp16")
    if trt_check:
        refusal = build_refusal(manifest.file(entry), host.tensorrt, entry.path, folder)
        if refusal:
            raise EngineBuildError(refusal)
    logger = trt_logger(trt)
    logger.reset()
    name = engine_name(precision)

    reporter.status(f"parsing {entry.path} ({plan.typing.value}ly typed, TensorRT {host.tensorrt})")
    parsed = network_from_onnx_path(trt, logger, manifest.file(entry), plan, onnx=entry.path,
                                    tensorrt=host.tensorrt)
    config = create_config(trt, parsed.builder, plan, workspace_gib=workspace_gib)
    input_name, chw = add_batch_profile(parsed.builder, parsed.network, config, profile, onnx=entry.path)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(host)
    reused = load_timing_cache(config, cache_path, host, reporter)

    reporter.status(f"building {name} (profile {profile}, {plan.typing.value} typing"
                    + (f", flags {'+'.join(f.value for f in plan.set_flags)}" if plan.set_flags else "") + ")")
    serialized, seconds = engine_from_network(trt, parsed, config, logger, reporter=reporter)
    if serialized is None:
        raise build_failure(logger.errors, logger.warnings, tensorrt=host.tensorrt, folder=folder,
                            precision=precision, profile=profile, workspace_gib=workspace_gib)

    dest = folder / name
    save_engine(dest, serialized)
    notes = [n for n in [save_timing_cache(config, cache_path)] if n]
    calibration = calibration_hash(manifest, folder) if precision is EnginePrecision.int8 else None
    facts = engine_facts(host, precision, plan, profile, input_name=input_name, chw=chw,
                         workspace_gib=workspace_gib, seconds=seconds, timing_cache=cache_path, reused=reused,
                         onnx=entry, calibration_sha256=calibration)
    record = record_engine(manifest, folder, dest, facts, profile)
    return EngineResult(dest, record, facts, notes)
