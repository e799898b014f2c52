"""`deploykit export`: checkpoint -> verified export folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.build import DynamicBatchCommand, build_and_verify
from deploykit.cli.check import check_tables
from deploykit.cli.options import (AllowPickleOpt, ArchOpt, InputShapeOpt, Int8AgreementOpt, LabelsOpt,
                                   MaxImagesOpt, MeanOpt, ModelDefOpt, ModelKwargsOpt, NumClassesOpt, ProfileOpt,
                                   ResizeOpt, StdOpt, TimingCacheOpt, WorkspaceOpt, check_max_images, load_options)
from deploykit.cli.render import console, literal, note, parity_table, warn
from deploykit.cli.render_precision import precision_tables
from deploykit.cli.messages import ConsoleReporter
from deploykit.errors import InputError, VerificationError
from deploykit.export import DEFAULT_OPSET
from deploykit.pipeline import export_folder
from deploykit.precision import PrecisionRequest
from deploykit.precision.calibrate import DEFAULT_CALIB_SIZE, DEFAULT_MIN_CALIB, CalibMethod
from deploykit.precision.remainder import Remainder
from deploykit.precision.variants import Int8Target
from deploykit.tensorrt.check import failing, parse_targets
from deploykit.tensorrt.host import require_host
from deploykit.tensorrt.profile import BatchProfile, EnginePrecision


class Target(str, Enum):
    onnx = "onnx"
    trt = "trt"


# -- the options only export takes (the shared ones are in cli/options.py) ---------------------------------------
ModelArg = Annotated[Path, typer.Argument(help="Checkpoint: .pth/.pt state_dict or deploykit checkpoint, "
                                               "TorchScript, torch.export .pt2, or a pickled module.")]
ToOpt = Annotated[Target, typer.Option("--to", help="Final artifact.")]
OutOpt = Annotated[Optional[str], typer.Option("--out", help="Export folder \\[default: exports/<model stem>/].")]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset.")]
BatchOpt = Annotated[int, typer.Option("--batch", help="Fixed batch size.")]
DynamicBatchOpt = Annotated[bool, typer.Option(
    "--dynamic-batch", help="Dynamic batch dimension. With --to trt it may take the engine's batch profile: "
                            "--dynamic-batch MIN:OPT:MAX \\[default: 1:8:32] (alias: --profile MIN:OPT:MAX).")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Verification images: an ImageFolder (labelled: "
                                                             "accuracy too) or a flat folder, or digits (the "
                                                             "held-out digits) \\[default: with --int8, images "
                                                             "of --calib held out of calibration; else the "
                                                             "bundled photos].")]
EvidenceImagesOpt = Annotated[bool, typer.Option(
    "--evidence-images/--no-evidence-images", help="Store the verification images (as the model sees them) "
    "in the folder beside PyTorch's logits on them, so `verify` anywhere judges against PyTorch on the same "
    "images. --no-evidence-images for private data: `verify --data` must then supply them.")]
NoVerifyOpt = Annotated[bool, typer.Option("--no-verify", help="Skip verification against PyTorch.")]
Fp16Opt = Annotated[bool, typer.Option("--fp16", help="Also write model.fp16.onnx (FP16 compute, FP32 I/O).")]
Int8Opt = Annotated[bool, typer.Option("--int8", help="Also write INT8 graphs calibrated on --calib images.")]
CalibOpt = Annotated[Optional[Path], typer.Option("--calib", help="INT8 calibration images: a folder (ImageFolder "
                                                              "or flat) or digits (its training split) "
                                                              "\\[default: ./calib].")]
CalibSizeOpt = Annotated[Optional[int], typer.Option(
    "--calib-size", help=f"Images to calibrate on (seeded sample) \\[default: {DEFAULT_CALIB_SIZE}].")]
CalibMethodOpt = Annotated[Optional[CalibMethod], typer.Option(
    "--calib-method", help="How ranges are chosen \\[default: mse; ReLU6/Clip outputs keep their range; bias "
                           "correction].")]
CalibGrayscaleOpt = Annotated[bool, typer.Option(
    "--calib-grayscale", help="Calibrate a colour model on grayscale images (converted to RGB) without a "
                              "warning: the model sees such images. Not needed for a `deploykit train` "
                              "checkpoint, which records it.")]
MinCalibOpt = Annotated[Optional[int], typer.Option(
    "--min-calib", help=f"Fewest calibration images accepted \\[default: {DEFAULT_MIN_CALIB}].")]
Int8ForOpt = Annotated[Optional[list[Int8Target]], typer.Option(
    "--int8-for", help="Implies --int8. trt: model.int8.onnx (Q/DQ for TensorRT); cpu: model.int8-cpu.onnx "
                       "(fastest for ONNX "
                       "Runtime CPU). Repeat for both \\[default: trt].")]
Int8RemainderOpt = Annotated[Optional[Remainder], typer.Option(
    "--int8-remainder", help="Precision of what model.int8.onnx (TensorRT) does not run in INT8: fp16 (in the "
                             "graph; TensorRT < 10.12 builds it with INT8 + FP16) or fp32 \\[default: fp16].")]
AccuracyBudgetOpt = Annotated[Optional[float], typer.Option(
    "--accuracy-budget", help="INT8 may lose at most this many points (accuracy with labelled --data, else "
                              "top-1 disagreement); the most sensitive layers stay FP32 to meet it.")]
Int8AccuracyDropOpt = Annotated[Optional[float], typer.Option(
    "--int8-accuracy-drop", help="INT8 gate with labelled --data: most accuracy points lost \\[default: 1.0, "
                                 "or --accuracy-budget].")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an export of another model in --out; a file there "
                                        "that deploykit did not write is kept as NAME.kept, never deleted.")]
TrtTargetsOpt = Annotated[Optional[str], typer.Option(
    "--trt-targets", help="Check every ONNX artifact against these TensorRT versions' operator tables and record "
                          "the verdicts (tensorrt_ready) in the manifest; none: skip \\[default: 10.3,11.5].")]


@app.command(cls=DynamicBatchCommand)  # --dynamic-batch [MIN:OPT:MAX]
def export(
    model: ModelArg,
    to: ToOpt = Target.onnx,
    out: OutOpt = None,
    opset: OpsetOpt = DEFAULT_OPSET,
    batch: BatchOpt = 1,
    dynamic_batch: DynamicBatchOpt = False,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    model_def: ModelDefOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    allow_pickle: AllowPickleOpt = False,
    input_shape: InputShapeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    labels: LabelsOpt = None,
    data: DataOpt = None,
    max_images: MaxImagesOpt = None,
    evidence_images: EvidenceImagesOpt = True,
    no_verify: NoVerifyOpt = False,
    fp16: Fp16Opt = False,
    int8: Int8Opt = False,
    calib: CalibOpt = None,
    calib_size: CalibSizeOpt = None,
    calib_method: CalibMethodOpt = None,
    calib_grayscale: CalibGrayscaleOpt = False,
    min_calib: MinCalibOpt = None,
    int8_for: Int8ForOpt = None,
    int8_remainder: Int8RemainderOpt = None,
    accuracy_budget: AccuracyBudgetOpt = None,
    int8_agreement: Int8AgreementOpt = None,
    int8_accuracy_drop: Int8AccuracyDropOpt = None,
    profile: ProfileOpt = None,
    workspace: WorkspaceOpt = None,
    timing_cache: TimingCacheOpt = None,
    force: ForceOpt = False,
    trt_targets: TrtTargetsOpt = None,
) -> None:
    """Export a PyTorch classifier to a verified export folder (model.onnx + deploykit.json)."""
    if out is not None and not out.strip():  # a str, not a Path: Path("") would be the current folder
        raise typer.BadParameter("an empty --out names no folder; give the export folder, e.g. --out exports/model",
                                 param_hint="'--out'")
    options = load_options(arch, num_classes, model_def, model_kwargs, allow_pickle, input_shape, mean, std,
                           resize, labels)
    checked = _trt_targets(trt_targets)  # fails early
    dynamic_batch = _check_engine_options(to, profile, workspace, timing_cache) or dynamic_batch
    int8 = int8 or bool(int8_for)  # --int8-for names which INT8 graph(s): it asks for INT8
    _check_int8_for(to, int8, int8_for)
    precision = PrecisionRequest(fp16=fp16, int8=int8, int8_for=tuple(dict.fromkeys(int8_for or [Int8Target.trt])),
                                 calib=calib, calib_size=calib_size, calib_method=calib_method, min_calib=min_calib,
                                 accuracy_budget=accuracy_budget, int8_agreement=int8_agreement,
                                 int8_accuracy_drop=int8_accuracy_drop, calib_grayscale=calib_grayscale,
                                 int8_remainder=int8_remainder)
    precision.validate()
    result = export_folder(model, out=None if out is None else Path(out), options=options, opset=opset, batch=batch,
                           dynamic_batch=dynamic_batch, verify=not no_verify, data=data, reporter=ConsoleReporter(),
                           precision=precision, force=force, max_images=check_max_images(max_images),
                           evidence_images=evidence_images, trt_targets=checked)
    try:
        _show(result, no_verify=no_verify, checked=checked)
        if to is Target.trt:  # on the line below, not in the manifest (the engines record their own build)
            with result.timings.stage("tensorrt_engines"):
                _build_engines(result, fp16=fp16, int8=int8 and Int8Target.trt in precision.int8_for,
                               profile=profile, workspace=workspace, timing_cache=timing_cache, data=data,
                               verify=not no_verify)
    finally:  # the last line, also before an out-of-tolerance exit: where the export's time went
        console.print(result.timings.summary(), highlight=False, soft_wrap=True)


def _trt_targets(text: str | None) -> list:
    """--trt-targets as TensorRT targets ([] for none; the defaults when not given)."""
    return [] if (text or "").strip().lower() == "none" else parse_targets(text)


def _check_engine_options(to: Target, profile: str | None, workspace: float | None, timing_cache) -> bool:
    """The engine flags, before minutes of export work: only with --to trt, a valid --profile, a positive
    --workspace. True when the profile is a batch range (the ONNX then needs a dynamic batch dimension)."""
    if to is not Target.trt:
        given = [flag for flag, value in (("--dynamic-batch MIN:OPT:MAX (alias --profile)", profile),
                                          ("--workspace", workspace),
                                          ("--timing-cache", timing_cache)) if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} only apply with --to trt")
    ranged = False
    if profile is not None:
        ranged = not BatchProfile.parse(profile).is_fixed
    if workspace is not None and not workspace > 0:
        raise InputError(f"--workspace is in GiB and must be > 0, got {workspace:g}")
    return ranged


def _check_int8_for(to: Target, int8: bool, int8_for: list[Int8Target] | None) -> None:
    if to is Target.trt and int8 and int8_for and Int8Target.trt not in int8_for:
        raise InputError("--to trt --int8 builds the INT8 engine from model.int8.onnx, which --int8-for cpu alone "
                         "does not make: add --int8-for trt (keep --int8-for cpu for the CPU graph too), or drop "
                         "--to trt")


def _show(result, *, no_verify: bool, checked) -> None:
    """The export's tables; VerificationError when an artifact is out of tolerance."""
    pre = result.loaded.preprocess
    arch = literal(result.loaded.arch or result.loaded.kind)
    console.print(f"[bold]{literal(result.folder)}/model.onnx[/]  arch={arch}  "
                  f"classes={result.loaded.num_classes}  input={'x'.join(map(str, pre.shape))}  "
                  f"opset={result.manifest.opset}", highlight=False)
    if result.precision is not None:
        for table in precision_tables(result.precision):
            console.print(table)
    if result.trt_checks:
        _print_checks(result.trt_checks, checked)
    if no_verify:
        note("verification skipped (--no-verify): the artifacts are not compared with PyTorch; run "
             f"`deploykit verify {result.folder}` to check them")
    if result.report is not None:
        console.print(parity_table(result.report))
        if not result.report.passed:
            raise VerificationError(f"out of tolerance: {result.report.failure_summary()}")


def _print_checks(checks, targets) -> None:
    """Before any engine build: which TensorRT target will fail on which artifact, and why (else one line)."""
    lines = failing(checks)
    versions = ", ".join(t.version for t in targets)
    if not lines:
        console.print(f"TensorRT {versions}: every ONNX artifact passes the operator-table check "
                      "(tensorrt_ready in deploykit.json; `deploykit check` for details)", highlight=False)
        return
    for table in check_tables(checks, targets):
        console.print(table)
    for line in lines:
        warn(f"will not build: {line}")


def _build_engines(result, *, fp16: bool, int8: bool, profile, workspace, timing_cache, data, verify) -> None:
    """--to trt: one engine per precision asked for (FP32 when neither --fp16 nor --int8), each verified.
    Without TensorRT or a GPU here: exit 3 naming what is missing and the `deploykit build` command(s)."""
    precisions = [p for p, on in ((EnginePrecision.fp16, fp16), (EnginePrecision.int8, int8)) if on] or \
        [EnginePrecision.fp32]
    done = f"{result.folder}: ONNX artifacts written" + (" and verified" if result.report is not None else "")
    requested = BatchProfile.parse(profile) if profile is not None else None
    require_host(result.folder, precisions, done=done, profile=requested, workspace_gib=workspace)
    failed = []
    for engine_precision in precisions:
        _, report = build_and_verify(result.folder, engine_precision, profile=profile, workspace=workspace,
                                     timing_cache=timing_cache, data=data, verify=verify, done=done,
                                     loaded=result.loaded)
        if report is not None and not report.passed:
            failed.append(report.failure_summary())
    if failed:
        raise VerificationError(f"out of tolerance: {' | '.join(failed)}")
