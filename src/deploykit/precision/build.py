"""The precision stage of an export: FP16 and INT8 artifacts beside ``model.onnx``, recorded in the manifest.

Called by :func:`deploykit.pipeline.export_folder` before verification; parity of every artifact is then
measured against PyTorch by the verification stage like any other artifact.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from deploykit.data import ImageSet, resolve_images
from deploykit.errors import InputError
from deploykit.files import sha256_file
from deploykit.manifest import Manifest
from deploykit.precision.calibrate import (DEFAULT_CALIB_SIZE, DEFAULT_MIN_CALIB, CalibMethod, Ranges, calibrate,
                                           calibration_images, check_channels, collect_stats, image_batches)
from deploykit.precision.fp16 import Fp16Graph, convert_fp16
from deploykit.precision.int8 import Int8Graph, TrtPlan, cpu_tensors, plan_trt, quantize_cpu, quantize_trt
from deploykit.precision.sensitivity import BudgetResult, fit_budget, logits_of, rank_layers, score
from deploykit.preprocess import Preprocess

FP16_NAME = "model.fp16.onnx"
INT8_NAME = "model.int8.onnx"
INT8_CPU_NAME = "model.int8-cpu.onnx"
SENSITIVITY_IMAGES = 64  # ranking runs one INT8 graph per layer: a subset keeps it to minutes on ResNet-50


class Int8Target(str, Enum):
    trt = "trt"
    cpu = "cpu"


@dataclass(frozen=True)
class PrecisionRequest:
    fp16: bool = False
    int8: bool = False
    int8_for: tuple[Int8Target, ...] = (Int8Target.trt,)
    calib: Path | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: CalibMethod = CalibMethod.entropy
    min_calib: int = DEFAULT_MIN_CALIB
    accuracy_budget: float | None = None
    int8_agreement: float | None = None  # the INT8 gate used to decide whether to look at sensitivity

    @property
    def any(self) -> bool:
        return self.fp16 or self.int8

    @property
    def overrides(self) -> dict:
        """INT8 gates the user moved: an accuracy budget is also the accuracy_drop gate it asked for."""
        from deploykit.verify import with_overrides

        out = {}
        for precision in ("int8", "int8-cpu"):
            out.update(with_overrides(precision, top1_agreement=self.int8_agreement,
                                      accuracy_drop=self.accuracy_budget))
        return out

    def validate(self) -> None:
        if not self.int8:
            given = [flag for flag, on in (("--calib", self.calib is not None),
                                           ("--accuracy-budget", self.accuracy_budget is not None)) if on]
            if given:
                raise InputError(f"{', '.join(given)} only apply with --int8")
        if self.accuracy_budget is not None and self.accuracy_budget < 0:
            raise InputError(f"--accuracy-budget is in points and must be >= 0, got {self.accuracy_budget}")


@dataclass
class PrecisionResult:
    fp16: Fp16Graph | None = None
    int8: dict[Int8Target, Int8Graph] = field(default_factory=dict)
    ranges: Ranges | None = None
    budget: BudgetResult | None = None
    notes: list[str] = field(default_factory=list)


ProgressFactory = Callable[[str, int], contextlib.AbstractContextManager]


@contextlib.contextmanager
def rich_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr; yields ``advance(n)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def prepare_calibration(request: PrecisionRequest, *, warn=None) -> ImageSet | None:
    """Check the calibration images before any export work (a bad --calib fails in a second, not a minute)."""
    request.validate()
    if not request.int8:
        return None
    return calibration_images(request.calib, size=request.calib_size, min_images=request.min_calib, warn=warn)


def add_precision_artifacts(folder: Path, manifest: Manifest, preprocess: Preprocess, request: PrecisionRequest, *,
                            calib_images: ImageSet | None = None, data: Path | None = None,
                            class_names=None, num_classes: int | None = None, warn=None, status=None,
                            progress: ProgressFactory | None = rich_progress,
                            max_images: int = 256) -> PrecisionResult:
    """Write the requested FP16/INT8 graphs next to ``folder/model.onnx`` and register them in ``manifest``."""
    import onnx

    from deploykit.verify import label_indices

    step = status or (lambda msg: None)
    folder = Path(folder)
    fp32 = folder / "model.onnx"
    result = PrecisionResult()
    if not request.any:
        return result
    request.validate()
    model = onnx.load(str(fp32))
    plan = plan_trt(model)
    verify_set = resolve_images(data, warn=warn).sample(max_images)
    verify_batch = verify_set.load(preprocess)

    if request.int8:
        images = calib_images or prepare_calibration(request, warn=warn)
        check_channels(images, preprocess.channels, request.calib or Path("calib"))
        tensors = list(plan.activation_tensors)
        if Int8Target.cpu in request.int8_for:
            tensors += [t for t in cpu_tensors(model) if t not in set(tensors)]
        step(f"calibrating INT8 on {len(images)} images ({request.calib_method.value})")
        result.ranges = calibrate(fp32, tensors, images, preprocess, request.calib_method, cache_dir=folder,
                                  progress_factory=progress)
        if result.ranges.cached:
            result.notes.append(f"INT8 ranges from the calibration cache {result.ranges.path.name} "
                                "(same model, images and method)")

    if request.fp16:
        step("converting to FP16")
        names = sorted(cpu_tensors(model))
        stats = collect_stats(fp32, names, [verify_batch], histogram=False)
        absmax = {n: s.amax for n, s in stats.items()}
        if result.ranges is not None:
            for n, r in result.ranges.tensors.items():
                absmax[n] = max(absmax.get(n, 0.0), abs(r["min"]), abs(r["max"]))
        result.fp16 = convert_fp16(fp32, folder / FP16_NAME, absmax)
        _register(manifest, folder, FP16_NAME, "fp16", {
            "io": "float32", "compute": "float16",
            "kept_fp32": result.fp16.kept_fp32, "max_abs_activation_seen": result.fp16.max_seen})

    if request.int8:
        amax = {n: r["amax"] for n, r in result.ranges.tensors.items()}
        excluded: list[str] = []
        if Int8Target.trt in request.int8_for:
            step("quantizing for TensorRT (Q/DQ)")
            graph = quantize_trt(fp32, folder / INT8_NAME, amax, plan=plan)
            labels = label_indices(verify_set, class_names, num_classes) if num_classes else None
            excluded = _budget(result, request, plan, fp32, folder, amax, verify_batch, labels, step, progress)
            if excluded:
                graph = quantize_trt(fp32, folder / INT8_NAME, amax, plan=plan, exclude=excluded)
            result.int8[Int8Target.trt] = graph
            _register(manifest, folder, INT8_NAME, "int8", _int8_details(graph, result, request, "tensorrt"))
        if Int8Target.cpu in request.int8_for:
            step("quantizing for ONNX Runtime CPU")
            graph = quantize_cpu(fp32, folder / INT8_CPU_NAME, result.ranges.tensors, plan=plan, exclude=excluded)
            result.int8[Int8Target.cpu] = graph
            _register(manifest, folder, INT8_CPU_NAME, "int8-cpu", _int8_details(graph, result, request, "onnxruntime-cpu"))
    return result


def _int8_details(graph: Int8Graph, result: PrecisionResult, request: PrecisionRequest, target: str) -> dict:
    from deploykit.precision.int8 import CPU_FORMAT

    details = {"target": target, "calibration": {"method": request.calib_method.value,
                                                  "images": result.ranges.n_images,
                                                  "cache": result.ranges.path.name if result.ranges.path else None},
               "int8_layers": len(graph.layers), "fp32_layers": graph.excluded, "op_counts": graph.counts}
    if target == "tensorrt":
        details.update(scheme="symmetric int8, zero point 0, per-channel weights, per-tensor activations",
                       other_layers="float32")
    else:
        details.update(format=CPU_FORMAT.value)
    if result.budget is not None:
        details["accuracy_budget"] = {"budget_pts": request.accuracy_budget, **result.budget.to_json()}
    return details


def _register(manifest: Manifest, folder: Path, name: str, precision: str, details: dict) -> None:
    path = folder / name
    manifest.set_artifact({"path": name, "precision": precision, "sha256": sha256_file(path),
                           "bytes": path.stat().st_size, "parity": None, "details": details})


def _budget(result: PrecisionResult, request: PrecisionRequest, plan: TrtPlan, fp32: Path, folder: Path,
            amax: dict, batch: np.ndarray, labels, step, progress) -> list[str]:
    """Sensitivity when INT8 misses its gate; with --accuracy-budget, the layers to keep in FP32."""
    from deploykit.verify import Precision, compare_logits, tolerance_for

    reference = logits_of(fp32, batch)
    int8_logits = logits_of(folder / INT8_NAME, batch)
    metrics = compare_logits(reference, int8_logits)
    gate = request.int8_agreement if request.int8_agreement is not None else \
        tolerance_for(Precision.INT8.value).top1_agreement
    base = score(reference, int8_logits, labels)
    missed = metrics["top1_agreement"] < gate or (request.accuracy_budget is not None and
                                                  base.loss > request.accuracy_budget)
    if not missed:
        return []
    step("INT8 misses its gate: measuring per-layer sensitivity")
    sub = slice(0, min(len(batch), SENSITIVITY_IMAGES))
    sub_ref, sub_labels = reference[sub], None if labels is None else labels[sub]

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        def evaluate_on(images: np.ndarray):
            def run(excluded):
                path = Path(tmp) / "probe.onnx"
                quantize_trt(fp32, path, amax, plan=plan, exclude=excluded)
                return logits_of(path, images)
            return run

        names = [layer.name for layer in plan.layers]
        if progress is not None:
            with progress(f"sensitivity of {len(names)} INT8 layers", len(names)) as advance:
                _, ranking = rank_layers(names, evaluate_on(batch[sub]), sub_ref, sub_labels, advance=advance)
        else:
            _, ranking = rank_layers(names, evaluate_on(batch[sub]), sub_ref, sub_labels)
        if request.accuracy_budget is not None:
            step(f"fitting the accuracy budget ({request.accuracy_budget:g} pts)")
        result.budget = fit_budget(base, ranking, request.accuracy_budget, evaluate_on(batch), reference, labels)
    if result.budget.met is False:
        result.notes.append(f"--accuracy-budget {request.accuracy_budget:g} not met even with "
                            f"{len(result.budget.kept_fp32)} layer(s) in FP32")
    return result.budget.kept_fp32


def fp16_stand_in_caveat(module, batch: np.ndarray, ort_metrics: dict, reference: np.ndarray | None = None) -> str | None:
    """When the FP16 graph fails on ONNX Runtime CPU, ask PyTorch's own FP16 whether the model is FP16-safe.

    ONNX Runtime's CPU provider has FP16 kernels for few ops and casts around the rest; on some graphs its
    FP16 result is wrong where FP16 itself is fine (seen on this project). If PyTorch in half precision agrees
    with FP32 while ORT does not, ORT cannot stand in for TensorRT on this graph: say so. Returns the sentence,
    or None when PyTorch FP16 is just as far off (the model itself is not FP16-safe).
    """
    try:
        import copy

        import torch
    except ImportError:
        return None
    if not isinstance(module, torch.nn.Module):
        return None
    from deploykit.verify import TOLERANCES, Precision, compare_logits, judge

    x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
    with torch.no_grad():
        ref = torch.from_numpy(reference) if reference is not None else module(x).float()
        try:
            half = copy.deepcopy(module).half()(x.half()).float()
        except (RuntimeError, NotImplementedError):  # an op without a CPU half kernel
            return None
    metrics = compare_logits(ref.numpy(), half.numpy())
    if judge(metrics, TOLERANCES[Precision.FP16]):
        return None
    return (f"ONNX Runtime CPU cannot stand in for TensorRT on this FP16 graph: PyTorch FP16 matches FP32 "
            f"(cos min {metrics['cosine_min']:.6f}, top-1 {metrics['top1_agreement']:.3f}) but ORT's FP16 run "
            f"does not (cos min {ort_metrics['cosine_min']:.6f}); the FP16 artifact is unproven here, verify it "
            "with TensorRT on the device")
