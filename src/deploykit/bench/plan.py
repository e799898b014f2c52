"""Which cases a bench measures, and why each requested one it cannot measure is skipped.

One planner per backend turns the folder's artifacts, the options and the host's :class:`Capabilities` into
:class:`Case` and :class:`Skip` items. Planners probe nothing: what the host can run is probed once
(``deploykit.bench.host.probe``) and handed in, so a test builds a ``Capabilities`` for the host it means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deploykit.bench.host import TORCH_MISSING, TORCH_NO_CUDA, Capabilities, engine_unusable
from deploykit.bench.measure import Case, ort_prepare, ov_prepare, torch_prepare, trt_prepare
from deploykit.bench.options import Backend, BenchOptions, Variant
from deploykit.bench.results import Skip, parity_summary
from deploykit.errors import InputError
from deploykit.manifest import ENGINE_SUFFIXES, MANIFEST_NAME, Artifact, Manifest
from deploykit.runners.base import Device
from deploykit.parity import Precision
from deploykit.runners.openvino import OV_INSTALL_HINT
from deploykit.verify import source_unusable

Planned = Iterator["Case | Skip"]


@dataclass(frozen=True)
class Folder:
    """The export folder as the planners see it: its manifest and the artifacts present in it."""

    path: Path
    manifest: Manifest
    present: tuple[Artifact, ...]
    where: str  # how skip reasons name the folder
    temporary: bool  # an export made on the fly for this bench: advice names no folder

    def artifact(self, precision: Precision, suffixes: str | tuple[str, ...]) -> Artifact | None:
        return next((a for a in self.present if a.precision == precision.value and a.path.endswith(suffixes)), None)

    def onnx(self, precision: Precision) -> Artifact | None:
        return self.artifact(precision, ".onnx")

    @property
    def fixed_batch(self) -> int | None:
        shape = self.manifest.input.get("shape") or [None]
        return shape[0] if isinstance(shape[0], int) and not self.manifest.input.get("dynamic_batch") else None


def plan_cases(folder: Path, manifest: Manifest, options: BenchOptions, caps: Capabilities,
               only: str | None = None, where: str | None = None) -> tuple[list[Case], list[Skip]]:
    """Every (backend, precision, variant, batch) to measure, and every requested one that cannot run here.

    ``only``: one artifact of the folder (``model.fp16.onnx``, ``model.fp16.engine``): just its backend and
    precision are benched, beside the PyTorch FP32 reference.
    """
    skips: list[Skip] = []
    backends = options.backends
    # bf16 is OpenVINO's compute precision for model.onnx (no bf16 file): an ov row only
    precisions = {b: tuple(p for p in options.precisions if b is Backend.ov or p is not Precision.BF16)
                  for b in Backend}
    if Precision.BF16 in options.precisions and Backend.ov not in backends and only is None and \
            set(options.precisions) != set(Precision):  # asked for by name, not as part of "everything"
        skips.append(Skip(Backend.ov, Precision.BF16, "bf16 is model.onnx computed in bf16 by OpenVINO: add ov to "
                                                      "--backends"))
    if only is not None:
        backends, precisions = _only(folder, manifest, options, only)
    present = tuple(a for a in manifest.artifacts
                    if (folder / a.path).is_file() and (only is None or a.path == only))
    for entry in present:
        manifest.file(entry)  # inside the folder, and the bytes the manifest recorded: else one line to re-export
    here = Folder(folder, manifest, present, where or f"{folder.name}/", where is not None)
    cases: list[Case] = []
    for backend in backends:
        for item in PLANNERS[backend](here, precisions[backend], options, caps):
            (cases if isinstance(item, Case) else skips).append(item)
    return cases, skips


def _only(folder: Path, manifest: Manifest, options: BenchOptions, only: str):
    """The backends and precisions that bench one artifact file, beside the PyTorch FP32 reference."""
    entry = manifest.artifact(only)
    if entry is None:
        raise InputError(f"{only} is not listed in {folder / MANIFEST_NAME}")
    kinds = (Backend.trt,) if only.endswith(ENGINE_SUFFIXES) else (Backend.ort, Backend.ov)
    backends = tuple(b for b in options.backends if b is Backend.torch or b in kinds)
    if not any(k in backends for k in kinds):
        raise InputError(f"{only} runs on {kinds[0].value}, which --backends leaves out"
                         + (f", as it does {kinds[1].value}" if len(kinds) > 1 else ""))
    precision = Precision(entry.precision)
    if precision not in options.precisions:
        raise InputError(f"{only} is {precision.value}, which --precisions leaves out")
    precisions = {Backend.torch: tuple(p for p in options.precisions if p is Precision.FP32),
                  **{k: (precision,) for k in kinds}}
    if precision is Precision.FP32 and Precision.BF16 in options.precisions:
        precisions[Backend.ov] += (Precision.BF16,)
    return backends, precisions


# -------------------------------------------------------------------------------------------- planners


def _torch_unavailable(here: Folder, caps: Capabilities, cpu: bool) -> str | None:
    manifest = here.manifest
    if not caps.torch:
        return TORCH_MISSING
    if not manifest.source.get("path"):
        return f"no {MANIFEST_NAME} beside the ONNX file, so its PyTorch source is unknown"
    if manifest.source_needs():
        return ("its source is code (a pickled module, TorchScript, a .pt2 program or --model-def), which a "
                "manifest cannot grant")
    reason = source_unusable(manifest)
    if reason is None and not cpu and not caps.torch_cuda:
        reason = TORCH_NO_CUDA
    return reason


def plan_torch(here: Folder, precisions: tuple[Precision, ...], options: BenchOptions, caps: Capabilities) -> Planned:
    backend, cpu = Backend.torch, options.device is Device.cpu
    reason = _torch_unavailable(here, caps, cpu)
    if reason:
        yield Skip(backend, None, reason)
        return
    forms: list[tuple[Precision, Variant]] = [(Precision.FP32, Variant.eager)]
    if options.torch_variants:
        if cpu:
            forms += [(Precision.FP32, Variant.channels_last), (Precision.FP32, Variant.compiled)]
        else:
            forms += [(Precision.FP16, Variant.channels_last_autocast), (Precision.FP32, Variant.compiled)]
    source = Path(here.manifest.source.get("path", "")).name
    for precision in precisions:
        mine = [v for p, v in forms if p is precision]
        if not mine:
            if precision is Precision.FP16:
                reason = ("PyTorch FP16 runs on CUDA only, as the channels_last+autocast variant "
                          "(--device cuda --torch-variants)" if cpu else
                          "PyTorch FP16 runs as the channels_last+autocast variant: add --torch-variants")
            else:
                reason = (f"PyTorch is benched in FP32 (the reference); {precision.value} is an ONNX "
                          "artifact: see the ort/trt rows")
            yield Skip(backend, precision, reason)
        for variant in mine:
            for b in options.batches:
                prepare = torch_prepare(here.path, here.manifest, options.device, variant, options.thread_count)
                yield Case(backend, precision, variant, b, prepare, artifact=source,
                           parity={"is_reference": True} if variant is Variant.eager else None)  # variants: unverified
    if options.torch_variants and cpu and Precision.FP16 in precisions:
        yield Skip(backend, Precision.FP16, "channels_last+FP16 autocast is a CUDA variant; "
                                            "on CPU bench runs channels_last in FP32")


def _fixed_batch_skips(here: Folder, backend: Backend, precision: Precision, entry: dict,
                       batches: tuple[int, ...]) -> tuple[list[int], list[Skip]]:
    """The batch sizes an ONNX artifact takes, and a skip for each one it does not (a fixed-batch export)."""
    fixed = here.fixed_batch
    ok = [b for b in batches if fixed is None or b == fixed]
    return ok, [Skip(backend, precision, f"{entry.path} has a fixed batch of {fixed}: re-export with "
                                         "--dynamic-batch", batch=b) for b in batches if b not in ok]


def plan_ort(here: Folder, precisions: tuple[Precision, ...], options: BenchOptions, caps: Capabilities) -> Planned:
    backend, cpu = Backend.ort, options.device is Device.cpu
    if not caps.onnxruntime:
        yield Skip(backend, None, "ONNX Runtime is not installed: pip install onnxruntime")
        return
    if not cpu and not caps.ort_cuda:
        yield Skip(backend, None, "this ONNX Runtime has no CUDA provider: pip install onnxruntime-gpu")
        return
    for precision in precisions:
        entry = here.onnx(precision)
        if entry is None:
            how = (f"it is exported in FP32 only; bench an export folder made with `deploykit export MODEL "
                   f"{_flags_for(precision)}`" if here.temporary else _how_to_make(precision))
            yield Skip(backend, precision, f"no {precision.value} ONNX artifact in {here.where} ({how})")
            continue
        note = None
        if cpu and precision is Precision.FP16:
            note = ("ORT's CPU provider has few FP16 kernels and runs this graph through casts: "
                    "unrepresentative of FP16 on a GPU (use --device cuda or trt)")
        elif cpu and precision is Precision.INT8:
            note = ("Q/DQ graph made for TensorRT, emulated by ORT's CPU provider; on a CPU ship int8-cpu "
                    "with ORT, or this file with OpenVINO (the ov int8 row)")
        batches, skips = _fixed_batch_skips(here, backend, precision, entry, options.batches)
        yield from skips
        for b in batches:
            yield Case(backend, precision, Variant.session, b,
                       ort_prepare(here.path / entry.path, options.device, options.thread_count),
                       artifact=entry.path, parity=parity_summary(entry), note=note)


def plan_ov(here: Folder, precisions: tuple[Precision, ...], options: BenchOptions, caps: Capabilities) -> Planned:
    backend = Backend.ov
    if options.device is not Device.cpu:
        yield Skip(backend, None, "deploykit runs OpenVINO on the CPU: use --device cpu")
        return
    if not caps.openvino:
        yield Skip(backend, None, f"OpenVINO is not installed: {OV_INSTALL_HINT}")
        return
    for precision in precisions:
        if precision is Precision.FP16:
            yield Skip(backend, precision, "OpenVINO's CPU plugin computes model.fp16.onnx in f32 "
                                           "(FP16 weights decompressed): see ov fp32 and ov bf16")
            continue
        if precision is Precision.BF16 and not caps.ov_bf16:
            yield Skip(backend, precision, "this CPU has no native bf16 (OpenVINO's CPU capabilities lack BF16)")
            continue
        entry = here.onnx(Precision.FP32 if precision is Precision.BF16 else precision)
        if entry is None:
            yield Skip(backend, precision, f"no {precision.value} ONNX artifact in {here.path.name}/ "
                                           f"({_how_to_make(precision)})")
            continue
        variants = [Variant.ov_bf16] if precision is Precision.BF16 else [Variant.ov_f32]
        if precision is Precision.INT8 and caps.ov_bf16:
            variants.append(Variant.ov_bf16)  # integer kernels, the non-INT8 rest in bf16
        batches, skips = _fixed_batch_skips(here, backend, precision, entry, options.batches)
        yield from skips
        for b in batches:
            for variant in variants:  # parity: verified after timing, on what ran (run.verify_ov_rows)
                yield Case(backend, precision, variant, b,
                           ov_prepare(here.path / entry.path, variant, options.thread_count),
                           artifact=entry.path)


def plan_trt(here: Folder, precisions: tuple[Precision, ...], options: BenchOptions, caps: Capabilities) -> Planned:
    backend = Backend.trt
    if options.device is Device.cpu:
        yield Skip(backend, None, trt_on_cpu_advice(None if here.temporary else here.path, gpu=caps.cuda))
        return
    if not caps.trt:
        yield Skip(backend, None, caps.trt_missing)
        return
    for precision in precisions:
        entry = here.artifact(precision, ENGINE_SUFFIXES)
        if entry is None:
            yield Skip(backend, precision, f"no {precision.value} TensorRT engine in {here.where} "
                                           "(deploykit export --to trt)")
            continue
        unusable = engine_unusable(entry, caps.trt_host, here.path)
        if unusable:
            yield Skip(backend, precision, unusable)
            continue
        parity = parity_summary(entry) or parity_summary(here.onnx(precision))
        engine_batch = entry.batch if isinstance(entry.batch, int) else None
        lo, hi = _engine_batches(entry)
        for b in options.batches:
            if engine_batch is not None and b != engine_batch:
                yield Skip(backend, precision, f"{entry.path} was built for batch {engine_batch}", batch=b)
                continue
            if lo is not None and not lo <= b <= hi:
                yield Skip(backend, precision, f"{entry.path}'s profile takes batches {lo} to {hi}: "
                                               f"rebuild with --profile MIN:OPT:MAX covering {b}", batch=b)
                continue
            for variant in (Variant.end_to_end, Variant.compute):
                yield Case(backend, precision, variant, b, trt_prepare(here.path / entry.path, variant),
                           artifact=entry.path, parity=parity)


PLANNERS: dict[Backend, Callable[[Folder, tuple[Precision, ...], BenchOptions, Capabilities], Planned]] = {
    Backend.torch: plan_torch, Backend.ort: plan_ort, Backend.ov: plan_ov, Backend.trt: plan_trt}


# ---------------------------------------------------------------------------------------------- advice


def _engine_batches(entry: Artifact) -> tuple[int | None, int | None]:
    """The batch range of an engine's optimization profile, from its manifest facts (None, None: unknown)."""
    profile = (entry.engine or {}).get("profile") or {}
    try:
        return int(profile["min"][0]), int(profile["max"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None, None


def trt_on_cpu_advice(folder: Path | None, *, gpu: bool) -> str:
    """Why the TensorRT rows of a CPU bench are skipped, and the next step that fits this host (``gpu``: a CUDA GPU
    is here; ``folder`` None: an export made on the fly, which the user cannot copy)."""
    if gpu:
        return "TensorRT runs on NVIDIA GPUs: add --device cuda"
    if folder is None:
        return ("no NVIDIA GPU here: on the device, export with `deploykit export MODEL --to trt` and bench that "
                "folder with --device cuda")
    return (f"no NVIDIA GPU here: build and bench the engine on the device: deploykit build {folder} && "
            f"deploykit bench {folder} --device cuda")


def _flags_for(precision: Precision) -> str:
    return {Precision.FP32: "", Precision.FP16: "--fp16", Precision.INT8: "--int8",
            Precision.INT8_CPU: "--int8-for cpu"}[precision]


def _how_to_make(precision: Precision) -> str:
    return {Precision.FP32: "run deploykit export",
            Precision.FP16: "export with --fp16",
            Precision.INT8: "export with --int8",
            Precision.INT8_CPU: "export with --int8 --int8-for cpu",
            Precision.BF16: "run deploykit export: bf16 is model.onnx computed in bf16"}[precision]
