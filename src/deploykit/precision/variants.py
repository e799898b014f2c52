"""The precision stage of an export (the reduced-precision variants of ``model.onnx``): FP16 and INT8 artifacts beside ``model.onnx``, recorded in the manifest.

Called by :func:`deploykit.pipeline.export_folder` before verification; parity of every artifact is then
measured against PyTorch by the verification stage like any other artifact.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from deploykit.data import ImageSet
from deploykit.errors import InputError
from deploykit.files import sha256_file
from deploykit.manifest import Manifest
from deploykit.parity import accuracy_labels, batch_digest, compare_logits, judge, tolerance_for, with_overrides
from deploykit.precision.calibrate import (DEFAULT_CALIB_SIZE, DEFAULT_MIN_CALIB, CalibMethod, Ranges, calibrate,
                                           calibration_images, calibration_pool, check_channels, collect_stats)
from deploykit.precision.fp16 import Fp16Graph, convert_fp16
from deploykit.precision.graph import qdq_counts, save_model
from deploykit.precision.int8 import CPU_FORMAT, Int8Graph, TrtPlan, cpu_tensors, plan_trt, qdq_trt, quantize_cpu
from deploykit.precision.remainder import QDQ_OPSET, Remainder, RemainderGraph, remainder_fp16, to_opset
from deploykit.precision.sensitivity import (BudgetResult, budget_split, fit_budget, layer_noise, logits_of, rank_layers,
                                             score)
from deploykit.preprocess import Preprocess
from deploykit.messages import SILENT, Reporter
from deploykit.timings import Timings

FP16_NAME = "model.fp16.onnx"
INT8_NAME = "model.int8.onnx"
INT8_CPU_NAME = "model.int8-cpu.onnx"
ABSMAX_IMAGES = 64  # verification images the FP16 range rule looks at for a tensor calibration did not see
SENSITIVITY_IMAGES = 64  # ranking runs one INT8 graph per layer: a subset keeps it to minutes on ResNet-50
# the one-pass noise of a miss without a budget: a tensor's noise power is a mean over millions of values, steady on
# 32 images (ResNet-50, 2 busy cores: 7.9 s on 32 images, 14.4 s on 64, the same three layers first; docs/precision.md)
NOISE_IMAGES = 32


class Int8Target(str, Enum):
    trt = "trt"
    cpu = "cpu"


@dataclass(frozen=True)
class PrecisionRequest:
    """What the precision stage was asked for. ``None`` means "not given": the calibration settings then take
    their defaults (:meth:`resolved`), and :meth:`validate` can tell a flag the user passed without ``--int8``."""

    fp16: bool = False
    int8: bool = False
    int8_for: tuple[Int8Target, ...] = (Int8Target.trt,)
    calib: Path | None = None
    calib_size: int | None = None  # None: DEFAULT_CALIB_SIZE
    calib_method: CalibMethod | None = None  # None: entropy
    min_calib: int | None = None  # None: DEFAULT_MIN_CALIB
    accuracy_budget: float | None = None
    int8_agreement: float | None = None  # INT8 gate: least top-1 agreement (as `deploykit verify`)
    int8_accuracy_drop: float | None = None  # INT8 gate with labels: most points lost (as `deploykit verify`)
    int8_remainder: Remainder | None = None  # None: fp16. What model.int8.onnx does not run in INT8
    # Judge each INT8 graph against its gate and rank its layers when it misses. Off for `export --no-verify`
    # (the user asked for speed, not checks) unless --accuracy-budget asks for the ranking.
    check: bool = True
    calib_grayscale: bool = False  # --calib-grayscale: the model sees grayscale images converted to colour
    grayscale_trained: bool = False  # the checkpoint says training converted grayscale images to colour

    @property
    def any(self) -> bool:
        return self.fp16 or self.int8

    def resolved(self) -> PrecisionRequest:
        """This request with every calibration setting not given set to its default."""
        return replace(self,
                       calib_size=DEFAULT_CALIB_SIZE if self.calib_size is None else self.calib_size,
                       calib_method=CalibMethod.default() if self.calib_method is None else self.calib_method,
                       min_calib=DEFAULT_MIN_CALIB if self.min_calib is None else self.min_calib,
                       int8_remainder=Remainder.fp16 if self.int8_remainder is None else
                       Remainder(self.int8_remainder))

    @property
    def overrides(self) -> dict:
        """INT8 gates the user moved. Without --int8-accuracy-drop, an accuracy budget is the accuracy_drop gate."""
        drop = self.int8_accuracy_drop if self.int8_accuracy_drop is not None else self.accuracy_budget
        out = {}
        for precision in ("int8", "int8-cpu"):
            out.update(with_overrides(precision, top1_agreement=self.int8_agreement, accuracy_drop=drop))
        return out

    def gate(self, precision: str):
        """The :class:`~deploykit.parity.Tolerance` an INT8 artifact of ``precision`` is judged by."""
        return self.overrides.get(precision) or tolerance_for(precision)

    def validate(self) -> None:
        if not self.int8:
            given = [flag for flag, value in (
                ("--calib", self.calib), ("--calib-size", self.calib_size), ("--calib-method", self.calib_method),
                ("--min-calib", self.min_calib), ("--accuracy-budget", self.accuracy_budget),
                ("--int8-agreement", self.int8_agreement), ("--int8-accuracy-drop", self.int8_accuracy_drop),
                ("--calib-grayscale", True if self.calib_grayscale else None),
                ("--int8-remainder", self.int8_remainder),
            ) if value is not None]
            if given:
                raise InputError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --int8")
        import math

        for flag, value, lo, hi in (("--accuracy-budget", self.accuracy_budget, 0.0, 100.0),
                                    ("--int8-agreement", self.int8_agreement, 0.0, 1.0),
                                    ("--int8-accuracy-drop", self.int8_accuracy_drop, 0.0, 100.0)):
            if value is not None and not (math.isfinite(value) and lo <= value <= hi):
                raise InputError(f"{flag} must be between {lo:g} and {hi:g}, got {value}")
        for flag, value, hi in (("--calib-size", self.calib_size, 1_000_000), ("--min-calib", self.min_calib,
                                                                                 1_000_000)):
            if value is not None and not 1 <= value <= hi:
                raise InputError(f"{flag} must be between 1 and {hi}, got {value}")


@dataclass
class PrecisionResult:
    fp16: Fp16Graph | None = None
    int8: dict[Int8Target, Int8Graph] = field(default_factory=dict)
    ranges: Ranges | None = None
    budgets: dict[Int8Target, BudgetResult] = field(default_factory=dict)  # targets whose INT8 missed its gate
    remainder: RemainderGraph | None = None  # model.int8.onnx's FP16 remainder, when it has one
    # logits already computed on the verification images (file name -> logits) and those images' digest, so the
    # verification stage does not run them again (verify.KnownLogits)
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    logits_digest: str | None = None
    notes: list[str] = field(default_factory=list)

    def other_precision(self, target: Int8Target) -> str:
        """What ``target``'s INT8 graph runs outside INT8: "FP16" (model.int8.onnx's FP16 remainder) or "FP32"."""
        return "FP16" if target is Int8Target.trt and self.remainder is not None else "FP32"

    @property
    def budget(self) -> BudgetResult | None:
        """The sensitivity/budget of the TensorRT graph (else of the CPU graph), when one was measured."""
        return self.budgets.get(Int8Target.trt) or self.budgets.get(Int8Target.cpu)


def prepare_calibration(request: PrecisionRequest, *, reporter: Reporter = SILENT) -> ImageSet | None:
    """Check the calibration images before any export work (a bad --calib fails in a second, not a minute);
    returns every usable --calib image (the pool the export holds verification images out of)."""
    request.validate()
    if not request.int8:
        return None
    request = request.resolved()
    pool = calibration_pool(request.calib, reporter=reporter)
    calibration_images(request.calib, size=request.calib_size, min_images=request.min_calib, pool=pool)
    return pool


def add_precision_artifacts(folder: Path, manifest: Manifest, preprocess: Preprocess, request: PrecisionRequest, *,
                            calib_images: ImageSet | None = None, data: Path | None = None,
                            class_names=None, num_classes: int | None = None, reporter: Reporter = SILENT,
                            max_images: int | None = None, verify_set: ImageSet | None = None,
                            verify_batch: np.ndarray | None = None,
                            timings: Timings | None = None) -> PrecisionResult:
    """Write the requested FP16/INT8 graphs next to ``folder/model.onnx`` and register them in ``manifest``.

    ``calib_images``: the images to draw the calibration sample from (default: all of --calib);
    ``verify_set`` / ``verify_batch``: the verification images and their preprocessed batch, as the export chose
    them (:func:`deploykit.evidence.choose_images`); default: ``data`` (or the bundled photos);
    ``timings`` gets the seconds of each stage."""
    import onnx

    step = reporter.status
    timings = timings if timings is not None else Timings()
    folder = Path(folder)
    fp32 = folder / "model.onnx"
    result = PrecisionResult()
    if not request.any:
        return result
    request.validate()
    request = request.resolved()
    with timings.stage("precision_setup"):
        model = onnx.load(str(fp32))
        plan = plan_trt(model)
        if verify_set is None:
            from deploykit.evidence import images_for

            verify_set = images_for(data, preprocess, max_images=max_images, reporter=reporter).images
        if verify_batch is None:
            verify_batch = verify_set.load(preprocess)

    if request.int8:
        _calibrate_int8(fp32, model, plan, preprocess, request, calib_images, result, reporter, timings)
    fp16_remainder_asked = (request.int8 and Int8Target.trt in request.int8_for
                            and request.int8_remainder is Remainder.fp16)
    if request.fp16 or fp16_remainder_asked:
        step("measuring FP32 activation ranges for FP16")
    with timings.stage("fp16_ranges"):
        absmax = _absmax(fp32, model, verify_batch, result.ranges) if request.fp16 or fp16_remainder_asked else {}
    if request.fp16:
        step("converting to FP16")
        with timings.stage("fp16"):
            result.fp16 = convert_fp16(fp32, folder / FP16_NAME, absmax)
        _register(manifest, folder, FP16_NAME, "fp16", {
            "io": "float32", "compute": "float16",
            "kept_fp32": result.fp16.kept_fp32, "max_abs_activation_seen": result.fp16.max_seen})
    if request.int8:
        _add_int8(folder, manifest, model, plan, request, result, absmax, fp16_remainder_asked, verify_set,
                  verify_batch, class_names, num_classes, reporter, timings)
    return result


def _calibrate_int8(fp32: Path, model, plan: TrtPlan, preprocess: Preprocess, request: PrecisionRequest,
                    calib_images: ImageSet | None, result: PrecisionResult, reporter: Reporter,
                    timings: Timings) -> None:
    """``result.ranges``: the calibration sample drawn, its channels checked, the ranges (and bias shifts) of
    every tensor the requested INT8 graphs quantize."""
    images = calibration_images(request.calib, size=request.calib_size, min_images=request.min_calib,
                                pool=calib_images, reporter=reporter)
    accepted = ("training did (the checkpoint says so)" if request.grayscale_trained else
                "--calib-grayscale says" if request.calib_grayscale else None)
    gray = check_channels(images, preprocess.channels, request.calib or Path("calib"), accepted=accepted,
                          reporter=reporter)
    if gray:
        result.notes.append(gray)
    tensors = list(plan.activation_tensors)
    if Int8Target.cpu in request.int8_for:
        tensors += [t for t in cpu_tensors(model) if t not in set(tensors)]
    reporter.status(f"calibrating INT8 on {len(images)} images ({request.calib_method.value})")
    result.ranges = calibrate(fp32, tensors, images, preprocess, request.calib_method, cache_dir=fp32.parent,
                              reporter=reporter, cpu=Int8Target.cpu in request.int8_for, timings=timings)
    if result.ranges.cached:
        result.notes.append(f"INT8 ranges from the calibration cache {result.ranges.path.name} "
                            "(same model, images and method)")


def _add_int8(folder: Path, manifest: Manifest, model, plan: TrtPlan, request: PrecisionRequest,
              result: PrecisionResult, absmax: dict[str, float], fp16_remainder_asked: bool, verify_set: ImageSet,
              verify_batch: np.ndarray, class_names, num_classes: int | None, reporter: Reporter,
              timings: Timings) -> None:
    """Write, judge (sensitivity on a miss) and register each requested INT8 graph."""
    import onnx

    fp32 = folder / "model.onnx"
    amax = {n: r["amax"] for n, r in result.ranges.tensors.items()}
    # Judging each INT8 graph (and ranking its layers when it misses) needs the FP32 logits: skipped for
    # `export --no-verify` unless --accuracy-budget asks for the ranking.
    judge_int8 = request.check or request.accuracy_budget is not None
    labels = accuracy_labels(verify_set, class_names, num_classes) if num_classes and judge_int8 else None
    with timings.stage("reference_logits"):
        reference = logits_of(fp32, verify_batch) if judge_int8 else None
    if reference is not None:
        result.logits["model.onnx"], result.logits_digest = reference, batch_digest(verify_batch)
    # the FP32 model at the FP16 remainder's opset once, not each graph's Q/DQ version once per probe
    trt_source = to_opset(model, QDQ_OPSET) if fp16_remainder_asked else model

    def quantize_for_trt(dest: Path, exclude=(), probe: bool = False) -> Int8Graph:
        """The TensorRT graph with ``exclude`` out of INT8, built in memory from the FP32 model loaded once
        and written once: a probe (sensitivity, budget) is the same graph, saved without the checker."""
        qdq = onnx.ModelProto()
        qdq.CopyFrom(trt_source)
        graph = qdq_trt(qdq, amax, plan=plan, exclude=exclude, bias=result.ranges.bias_for(exclude))
        if fp16_remainder_asked:  # the layers left out of INT8 (the budget's too) go to the FP16 remainder
            qdq, rewritten = remainder_fp16(qdq, absmax)
            graph.counts = qdq_counts(qdq)
            if not probe:
                result.remainder = rewritten
        save_model(qdq, dest, check=not probe)
        graph.path = Path(dest)
        return graph

    targets = {
        Int8Target.trt: (INT8_NAME, "int8", "tensorrt",
                         f"quantizing for TensorRT (Q/DQ, {request.int8_remainder.value.upper()} remainder)",
                         quantize_for_trt),
        Int8Target.cpu: (INT8_CPU_NAME, "int8-cpu", "onnxruntime-cpu", "quantizing for ONNX Runtime CPU",
                         lambda dest, exclude=(), probe=False: quantize_cpu(
                             fp32, dest, result.ranges.tensors, plan=plan, exclude=exclude,
                             bias=result.ranges.bias_for(exclude, cpu=True))),
    }
    for target in request.int8_for:
        name, precision, runtime, message, quantize = targets[target]
        reporter.status(message)
        with timings.stage(f"quantize_{target.value}"):
            graph = quantize(folder / name)
        with timings.stage(f"gate_{target.value}"):  # the INT8 graph's logits; sensitivity, when it missed
            excluded = [] if reference is None else _budget(result, request, target, precision, plan, quantize,
                                                            folder / name, verify_batch, reference, labels,
                                                            reporter)
        if excluded:
            with timings.stage(f"quantize_{target.value}"):
                graph = quantize(folder / name, excluded)
            result.logits.pop(name, None)  # logits of the graph before the budget moved layers
        result.int8[target] = graph
        _register(manifest, folder, name, precision, _int8_details(graph, result, request, target, runtime))


def _absmax(fp32: Path, model, batch: np.ndarray, ranges: Ranges | None) -> dict[str, float]:
    """The largest ``|x|`` per float tensor of the FP32 graph (the FP16 rules keep nodes whose output goes beyond
    FP16's safe range in FP32): from the calibration statistics where they cover the tensor (every one with
    ``--int8-for cpu``), so the rule is not fitted to the images it is then verified on; the others measured on the
    first ABSMAX_IMAGES verification images (an FP16-only export: all of them)."""
    absmax = {n: max(abs(r["min"]), abs(r["max"])) for n, r in (ranges.tensors if ranges else {}).items()}
    missing = sorted(set(cpu_tensors(model)) - set(absmax))
    if missing:  # collect_stats keeps each tensor's running min/max, at most MAX_CHUNK images at a time
        stats = collect_stats(fp32, missing, [batch[:ABSMAX_IMAGES]], histogram=False)
        absmax.update({n: s.amax for n, s in stats.items()})
    return absmax


def _int8_details(graph: Int8Graph, result: PrecisionResult, request: PrecisionRequest, target: Int8Target,
                  runtime: str) -> dict:
    ranges, cpu = result.ranges, target is Int8Target.cpu
    shifts = ranges.bias_for(cpu=cpu)
    calibration = {"method": request.calib_method.value, "images": ranges.n_images,
                   "bias_corrected_layers": len(shifts or {}),
                   # the graph the bias shifts were measured on: each graph's own since deploykit-calib/8
                   "bias_measured_on": None if shifts is None else
                   "onnxruntime-cpu" if cpu and ranges.bias_cpu is not None else "tensorrt",
                   "cache": ranges.path.name if ranges.path else None}
    details = {"target": runtime, "calibration": calibration,
               "int8_layers": len(graph.layers), "fp32_layers": graph.excluded, "op_counts": graph.counts}
    # where the file is deployed as it is: the Q/DQ graph is TensorRT's input and OpenVINO's fastest CPU form
    details["deploy_on"] = ["tensorrt", "openvino"] if target is Int8Target.trt else ["onnxruntime-cpu"]
    if target is Int8Target.trt:
        remainder = request.int8_remainder
        details.update(scheme="symmetric int8, zero point 0, per-channel weights, per-tensor activations",
                       other_layers=remainder.dtype, remainder=remainder.value)
        if remainder is Remainder.fp16 and result.remainder is not None:
            details.update(opset=result.remainder.opset, kept_fp32=result.remainder.kept_fp32)
    else:
        details.update(format=CPU_FORMAT.value)
    budget = result.budgets.get(target)
    if budget is not None:
        details["accuracy_budget"] = {"budget_pts": request.accuracy_budget, **budget.to_json()}
    return details


def _register(manifest: Manifest, folder: Path, name: str, precision: str, details: dict) -> None:
    path = folder / name
    manifest.set_artifact({"path": name, "precision": precision, "sha256": sha256_file(path),
                           "bytes": path.stat().st_size, "parity": None, "details": details})


def _budget(result: PrecisionResult, request: PrecisionRequest, target: Int8Target, precision: str, plan: TrtPlan,
            quantize: Callable, int8_path: Path, batch: np.ndarray, reference: np.ndarray, labels,
            reporter: Reporter) -> list[str]:
    """Sensitivity when the INT8 graph at ``int8_path`` misses its gate (top-1 agreement, and accuracy_drop
    with labels) or the budget; with --accuracy-budget, the layers to keep in FP32.

    ``quantize(dest, exclude)`` writes this target's INT8 graph with the ``exclude`` layers left in FP32.
    """
    int8_logits = logits_of(int8_path, batch)
    result.logits[int8_path.name] = int8_logits
    base = score(reference, int8_logits, labels)
    missed = _missed(request, precision, reference, int8_logits, base, labels, len(batch))
    if not missed:
        return []
    if request.accuracy_budget is None:  # no budget to fit: name the likely layers in one pass, in seconds
        _likely_layers(result, target, plan, int8_path, batch, base, missed, reporter)
        return []
    reporter.status(f"{int8_path.name} misses its gate ({'; '.join(missed)}): measuring per-layer sensitivity")
    budget = _fit(result, request, plan, quantize, int8_path, batch, reference, int8_logits, labels, reporter)
    result.budgets[target] = budget
    names = [layer.name for layer in plan.layers]
    if names and len(budget.kept_fp32) == len(names):
        result.notes.append(f"{int8_path.name}: --accuracy-budget {request.accuracy_budget:g} leaves no layer in INT8 "
                            f"on these images (all {len(names)} in {result.other_precision(target)}): raise the "
                            "budget, or judge it on labelled --data, where flips between wrong classes cost nothing")
    if budget.met is False:
        where = (f" on the {budget.n_confirm} confirmation images (loss {budget.confirm.loss:.2f} pts; "
                 f"{budget.final.loss:.2f} on the {budget.n_search} it was fitted on)" if budget.confirm else "")
        result.notes.append(f"{int8_path.name}: --accuracy-budget {request.accuracy_budget:g} not met{where} "
                            f"with {len(budget.kept_fp32)} layer(s) in {result.other_precision(target)}")
    return budget.kept_fp32


def _missed(request: PrecisionRequest, precision: str, reference: np.ndarray, int8_logits: np.ndarray, base,
            labels, n: int) -> list[str]:
    """What the INT8 logits miss: the gate of ``precision`` (top-1 agreement, and accuracy_drop with labels) and
    the accuracy budget's chance of holding on other images."""
    metrics = compare_logits(reference, int8_logits)
    if labels is not None:  # with labels the loss is the accuracy drop in points
        metrics["accuracy_drop"] = base.loss
    missed = judge(metrics, request.gate(precision))
    _, confirm = budget_split(n, reference=reference)
    n_other = len(confirm) or n
    if request.accuracy_budget is not None and not base.holds(request.accuracy_budget, n_other):
        missed.append(f"--accuracy-budget {request.accuracy_budget:g} not held: loss {base.loss:.2f} pts" +
                      ("" if base.expected is None else
                       f", expected {base.expected:.2f}; a {base.within(request.accuracy_budget, n_other):.0%} "
                       f"chance of being within it on {n_other} other images"))
    return missed


def _likely_layers(result: PrecisionResult, target: Int8Target, plan: TrtPlan, int8_path: Path, batch: np.ndarray,
                   base, missed: list[str], reporter: Reporter) -> None:
    """A miss without a budget: the layers with the most quantization noise, in one pass, named in a note."""
    reporter.status(f"{int8_path.name} misses its gate ({'; '.join(missed)}): naming the likely layers (one pass)")
    images = batch[:NOISE_IMAGES]
    with reporter.progress(f"quantization noise of {len(plan.layers)} INT8 layers ({int8_path.name})",
                           len(images)) as task:
        noise = layer_noise(int8_path.parent / "model.onnx", plan.layers, result.ranges.tensors, images,
                            unsigned=target is Int8Target.cpu, advance=task.advance)
    budget = BudgetResult(base, noise, one_pass=True)
    budget.n_ranking = len(images)
    result.budgets[target] = budget
    likely = ", ".join(n.layer for n in noise[:3])
    result.notes.append(f"{int8_path.name} missed its gate; the likely layers (most quantization noise, one "
                        f"pass on {len(images)} images): {likely}. To find the fewest to keep out of INT8, "
                        "export again with --accuracy-budget PTS (a per-layer search: minutes on a large "
                        "model)")


def _fit(result: PrecisionResult, request: PrecisionRequest, plan: TrtPlan, quantize: Callable, int8_path: Path,
         batch: np.ndarray, reference: np.ndarray, int8_logits: np.ndarray, labels, reporter: Reporter) -> BudgetResult:
    """--accuracy-budget: rank the layers on the search half of the images, fit the budget along the ranking,
    confirm it on the other half."""
    search, confirm = budget_split(len(batch), reference=reference)
    if len(confirm) == 0:
        search, confirm = np.arange(len(batch)), None  # ranking alone: all images
    s_batch, s_ref = batch[search], reference[search]
    s_labels = None if labels is None else labels[search]
    sub = slice(0, min(len(s_batch), SENSITIVITY_IMAGES))
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
        def evaluate_on(images: np.ndarray):
            def run(excluded):
                path = Path(tmp) / "probe.onnx"
                quantize(path, excluded, probe=True)
                return logits_of(path, images)
            return run

        names = [layer.name for layer in plan.layers]
        with reporter.progress(f"sensitivity of {len(names)} INT8 layers ({int8_path.name})", len(names) + 1) as task:
            floor, ranking = rank_layers(names, evaluate_on(s_batch[sub]), s_ref[sub],
                                         None if s_labels is None else s_labels[sub], advance=task.advance)
        reporter.status(f"fitting the accuracy budget ({request.accuracy_budget:g} pts) for {int8_path.name} on "
                        f"{len(search)} images, confirming on {0 if confirm is None else len(confirm)} others")
        s_base = score(s_ref, int8_logits[search], s_labels)  # the graph at int8_path is the all-INT8 one
        budget = fit_budget(s_base, ranking, request.accuracy_budget, evaluate_on(s_batch), s_ref, s_labels,
                            confirm_n=None if confirm is None else len(confirm))
        budget.n_search, budget.floor, budget.n_ranking = len(search), floor, len(s_batch[sub])
        if confirm is not None:
            c_labels = None if labels is None else labels[confirm]
            budget.confirm = score(reference[confirm], evaluate_on(batch[confirm])(tuple(budget.kept_fp32)),
                                   c_labels)
            budget.n_confirm = len(confirm)
            budget.met = budget.confirm.loss <= request.accuracy_budget
    return budget
