"""Verification: run an export folder's artifacts and their reference on the same images; judge with
:mod:`deploykit.parity`.

One flow (:func:`verify_folder`) serves ``deploykit export`` (the in-memory PyTorch model and the manifest being
written), ``deploykit verify``, ``deploykit build`` (an engine just built) and ``deploykit bench`` (parity of each
timed row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.evidence import VerificationData, held_out_text
from deploykit.errors import DeployKitError, InputError
from deploykit.manifest import Artifact, Manifest, artifact_kind
from deploykit.parity import (TOLERANCES, ArtifactReport, ParityReport, Precision, Tolerance, accuracy_labels, assess,
                              batch_digest, compare_logits, degenerate_reference, judge)
from deploykit.reporter import SILENT, Reporter
from deploykit import runners
from deploykit.runners.base import Backend, Runner


@dataclass(frozen=True)
class KnownLogits:
    """Logits an earlier stage of the same export computed with ONNX Runtime on the verification images
    (``digest``: :func:`batch_digest`): verification uses them instead of running those files again."""

    digest: str | None
    logits: dict[str, np.ndarray]


class _Known(Runner):
    name = "onnxruntime"

    def __init__(self, logits: np.ndarray, input_shape) -> None:
        self.logits, self.input_shape = logits, input_shape

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.logits

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - infer is overridden
        return self.logits


def compare_runners(reference: Runner, candidates: Sequence[tuple[str, str, Runner]], batch: np.ndarray, *,
                    labels: np.ndarray | None = None, overrides: dict[str, Tolerance] | None = None,
                    reference_name: str = "pytorch", data_name: str = "") -> ParityReport:
    """Run ``reference`` and each ``(path, precision, runner)`` on ``batch`` and judge them."""
    ref_logits = reference.infer(batch)
    note = degenerate_reference(ref_logits)
    reports = [assess(path, precision, ref_logits, runner.infer(batch), labels=labels, overrides=overrides, note=note)
               for path, precision, runner in candidates]
    report = ParityReport(reports, reference_name, data_name, int(batch.shape[0]), note)
    report.reference_logits = ref_logits
    return report


RECORDED = "pytorch (recorded)"  # the reference name of PyTorch's logits read from the folder's evidence


def verification_data(manifest: Manifest, data: Path | str | None = None, *, max_images: int | None = None,
                      reporter: Reporter = SILENT) -> VerificationData:
    """The images a command judges on: the folder's evidence (PyTorch's recorded logits on them) unless ``data``
    overrides; ``data`` whose pixels are exactly the evidence images (left out with --no-evidence-images) gets the
    recorded logits too. A folder exported before evidence was recorded falls back to the bundled photos."""
    from deploykit.evidence import images_for, recorded_data, recorded_logits_for

    if data is None:
        recorded = recorded_data(manifest, reporter=reporter)
        if recorded is not None:
            reporter.note(f"judging on the folder's evidence: {recorded.n_images} images of "
                          f"{recorded.info['source']} ({held_out_text(recorded.info)}), against PyTorch's logits "
                          "recorded at export")
            return recorded
    pre = manifest.preprocessing
    selection = images_for(data, pre, max_images=max_images, reporter=reporter)
    if data is None:
        reporter.warn(f"{manifest.folder} carries no recorded evidence (exported with --no-verify, or by an older "
                      f"deploykit): judging on {selection.why}; pass --data, or export again (verified) to record "
                      "the model's own images and PyTorch's logits on them")
    else:
        reporter.note(f"judging on {selection.why}")
    pixels = pre.pixel_batch(selection.images.paths)
    classes = manifest.model.get("num_classes")
    labels = None if classes is None else accuracy_labels(selection.images, manifest.class_names, int(classes),
                                                          reporter)
    out = VerificationData(pre.normalize(pixels), pixels, labels, selection.describe())
    out.recorded = recorded_logits_for(manifest, pixels)
    if out.recorded is not None:
        out.info["selection"] += " (the folder's evidence images, matched by content)"
    return out


def verify_folder(folder: Path, *, data: Path | None = None, reporter: Reporter = SILENT,
                  overrides: dict[str, Tolerance] | None = None, max_images: int | None = None,
                  only: Sequence[str] | None = None, loaded=None, manifest: Manifest | None = None,
                  allow_pickle: bool = False, model_def: str | None = None, backend: Backend | str | None = None,
                  threads: int | None = None, known: KnownLogits | None = None,
                  images: VerificationData | None = None, recheck: bool = False) -> ParityReport:
    """Verify every ONNX artifact and TensorRT engine of an export folder against the PyTorch reference: by
    default its logits recorded at export on the folder's evidence images (no torch needed), else (``data``, or a
    folder without evidence) the PyTorch model run here, or the FP32 ONNX where torch or the source is missing.
    Engines are skipped with a warning where TensorRT or a GPU is missing, unless named in ``only``.
    ``loaded``: the in-memory PyTorch model, when the caller has it (export), instead of reloading the source;
    ``manifest``: the record being written (export), instead of the folder's ``deploykit.json``; ``images``: the
    verification images already chosen (export); ``recheck``: also run the PyTorch source and compare it with the
    recorded logits (``reference_check`` in the report).

    ``backend``: run every artifact on that runtime instead of the one it is for (ONNX on ``ort``, engines on
    ``trt``). ``ov``: the ONNX artifacts on OpenVINO (f32, and ``model.onnx`` also in bf16 where the CPU has native
    bf16, judged as ``bf16``); each entry says what ran (``backend``, ``inference_precision``,
    ``layer_precisions``), and an INT8 artifact is also run on ONNX Runtime, reported under ``"ort"`` with the
    top-1 agreement of the two runtimes."""
    from deploykit.errors import MissingDependencyError

    folder = Path(folder)
    backend = None if backend is None else Backend(backend)
    manifest = manifest if manifest is not None else Manifest.load(folder)
    vdata = images if images is not None else verification_data(manifest, data, max_images=max_images,
                                                                reporter=reporter)
    batch = vdata.batch
    if known is not None and (backend is not None or known.digest != batch_digest(batch)):
        known = None  # other images or another runtime: run everything
    check = None
    if vdata.recorded is not None and loaded is None:
        reference, ref_name, kind = _Known(vdata.recorded, manifest.preprocessing.shape), RECORDED, "pytorch-recorded"
        if recheck:
            check = _recheck(folder, manifest, vdata, reporter, allow_pickle, model_def)
    else:
        reference, ref_name = reference_runner(folder, manifest, reporter=reporter, loaded=loaded,
                                               allow_pickle=allow_pickle, model_def=model_def, channels_last=True)
        kind = "pytorch" if ref_name == "pytorch" else "onnx-fp32"
        if data is not None and _has_evidence(manifest) and kind == "onnx-fp32":
            reporter.note(f"these are not the folder's evidence images: the reference logits are recomputed with "
                          f"{ref_name}, not read from PyTorch's record")
    entries = [a for a in manifest.artifacts if _verifiable(a.path) and (only is None or a.path in only)]
    if not entries:
        raise InputError(f"{folder} has no ONNX artifacts or engines; run `deploykit export` again")
    if backend is not None:
        entries = _for_backend(entries, backend, folder, only)
    if ref_name in {a.path for a in entries} and backend is not Backend.ov:
        # the FP32 ONNX stands in as reference: not judged by itself (on OpenVINO it is another run: judged)
        entries = [a for a in entries if a.path != ref_name]
        if not entries:
            raise InputError(f"no PyTorch reference ({getattr(reference, 'reason', 'see above')}) and {ref_name} is "
                             "the only artifact: nothing to compare")
    runs = [(a.path, a.precision, "f32") for a in entries]
    if backend is Backend.ov:
        from deploykit.runners.openvino import native_bf16

        bf16 = native_bf16()  # without OpenVINO: MissingDependencyError (exit 3) here
        fp32 = next((p for p, prec, _ in runs if prec == Precision.FP32.value), None)
        if bf16 and fp32:  # OpenVINO's own default on such CPUs: verified as what it is, bf16
            runs.append((fp32, Precision.BF16.value, "bf16"))
    candidates = []
    for path, precision, hint in runs:
        if known is not None and path in known.logits and hint == "f32":
            manifest.file(path)  # still the file it was (size, sha256)
            candidates.append((path, precision, _Recorded(_Known(known.logits[path], manifest.preprocessing.shape))))
            continue
        try:
            runner = runners.open(manifest.file(path), backend, reporter=reporter, inference_precision=hint,
                                  threads=threads)
        except (MissingDependencyError, InputError) as exc:
            if only is not None or isinstance(exc, InputError) and backend is not Backend.ov:
                raise
            reporter.warn(f"skipping {path}{'' if hint == 'f32' else f' in {hint}'}: {exc}")
            continue
        runner = _Recorded(runner)
        candidates.append((path, precision, runner))
        if backend is Backend.ov and precision == Precision.INT8.value:
            with contextlib.suppress(DeployKitError):  # the ONNX Runtime twin: reported beside, not judged
                candidates.append((path, precision, _Recorded(runners.open(manifest.file(path), threads=threads))))
    if not candidates:
        raise InputError(f"nothing in {folder} can be verified on this machine")
    report = compare_runners(reference, candidates, batch, labels=vdata.labels, overrides=overrides,
                             reference_name=ref_name, data_name=vdata.info["source"])
    report.kind, report.data_info, report.reference_check = kind, dict(vdata.info), check
    if backend is Backend.ov:
        _describe_ov_runs(report, candidates)
    explain_fp16_failures(report, getattr(reference, "module", None), batch)
    return report


def _has_evidence(manifest: Manifest) -> bool:
    return manifest.evidence is not None


def _recheck(folder: Path, manifest: Manifest, vdata: VerificationData, reporter: Reporter, allow_pickle: bool,
             model_def: str | None) -> dict:
    """The PyTorch source run here against its logits recorded at export, judged by the FP32 tolerance."""
    reference, name = reference_runner(folder, manifest, allow_pickle=allow_pickle, model_def=model_def,
                                       channels_last=True)  # silent: a missing source is this one error
    if name != "pytorch":
        raise InputError(f"--recheck-reference runs the PyTorch source, which is not usable here "
                         f"({getattr(reference, 'reason', 'see above')})")
    metrics = compare_logits(vdata.recorded, reference.infer(vdata.batch))
    failures = judge(metrics, TOLERANCES[Precision.FP32])
    return {"reference": "pytorch", "max_abs_diff": metrics["max_abs_diff"], "cosine_min": metrics["cosine_min"],
            "top1_agreement": metrics["top1_agreement"], "passed": not failures,
            "failures": [f"PyTorch here vs its recorded logits: {f}" for f in failures]}


class _Recorded(Runner):
    """A runner that keeps its last logits (to compare two runtimes on the same images afterwards)."""

    def __init__(self, inner: Runner) -> None:
        self.inner, self.name, self.input_shape = inner, inner.name, inner.input_shape
        self.logits: np.ndarray | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.logits = self.inner.infer(batch)
        return self.logits

    def close(self) -> None:
        self.inner.close()

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - infer is overridden
        return self.inner.infer(batch)


def _for_backend(entries: list[Artifact], backend: Backend, folder: Path,
                 only: Sequence[str] | None) -> list[Artifact]:
    """The artifacts ``backend`` runs: ONNX files on ort/ov, engines on trt; naming another kind is an error."""
    wanted = [a for a in entries if (a.kind == "engine") == (backend is Backend.trt)]
    if only is not None and len(wanted) < len(entries):
        other = next(a.path for a in entries if a not in wanted)
        raise InputError(f"{other} cannot run on --backend {backend.value}: " +
                         ("TensorRT runs engines; build one with `deploykit build " + str(folder) + "`"
                          if backend is Backend.trt else "an engine runs on TensorRT (--backend trt)"))
    if not wanted:
        raise InputError(f"{folder} has no TensorRT engine: `deploykit build {folder}` on the device" if backend is
                         Backend.trt else f"{folder} has no ONNX artifact: run `deploykit export` again")
    return wanted


def _describe_ov_runs(report: ParityReport, candidates: list[tuple[str, str, Runner]]) -> None:
    """Say on each OpenVINO entry what ran; move each ONNX Runtime twin's result under its entry's ``"ort"``, with
    the two runtimes' top-1 agreement with each other."""
    ov_runs: dict[tuple[str, str], tuple[ArtifactReport, np.ndarray]] = {}
    for art, (_, _, runner) in zip(report.artifacts, candidates):
        inner = runner.inner
        if inner.name == "openvino":
            art.extra = {"backend": "ov", "inference_precision": inner.inference_precision,
                         "layer_precisions": inner.layer_precisions, "openvino": inner.version}
            ov_runs[(art.path, art.precision)] = (art, runner.logits)
        else:  # the ONNX Runtime twin of the OpenVINO run before it
            owner, ov_logits = ov_runs[(art.path, art.precision)]
            owner.extra["ort"] = {"metrics": art.metrics, "passed": art.passed, "failures": art.failures,
                                  "top1_agreement_with_ov": compare_logits(runner.logits, ov_logits)["top1_agreement"]}
    report.artifacts[:] = [art for art, _ in ov_runs.values()]


def explain_fp16_failures(report: ParityReport, module, batch: np.ndarray) -> None:
    """Each failed FP16 ONNX artifact: when PyTorch FP16 (``module`` in half precision) matches FP32 where
    ONNX Runtime's FP16 run did not, ORT cannot stand in for TensorRT on that graph. Say so in the artifact's
    ``note`` (also a failure line: it is neither passed nor silently failed). No module: nothing to ask."""
    if module is None:
        return
    for art in report.artifacts:
        if art.precision == Precision.FP16.value and not art.passed and art.path.endswith(".onnx"):
            caveat = fp16_stand_in_caveat(module, batch, art.metrics)
            if caveat:
                art.note = f"{art.note}; {caveat}" if art.note else caveat
                art.failures.append(caveat)


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
    x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
    with torch.no_grad():
        ref = torch.from_numpy(reference) if reference is not None else module(x).float()
        try:
            half = copy.deepcopy(module).half()(x.half()).float()
        except Exception:  # noqa: BLE001 -- an op without a CPU half kernel, a module that cannot be copied:
            return None  # a diagnostic that cannot run says nothing
    metrics = compare_logits(ref.numpy(), half.numpy())
    if judge(metrics, TOLERANCES[Precision.FP16]):
        return None
    return (f"ONNX Runtime CPU cannot stand in for TensorRT on this FP16 graph: PyTorch FP16 matches FP32 "
            f"(cos min {metrics['cosine_min']:.6f}, top-1 {metrics['top1_agreement']:.3f}) but ORT's FP16 run "
            f"does not (cos min {ort_metrics['cosine_min']:.6f}); the FP16 artifact is unproven here, verify it "
            "with TensorRT on the device")


def _verifiable(path: str) -> bool:
    return artifact_kind(path) is not None


def on_backend(runner: Runner, backend: Backend | str, reporter: Reporter = SILENT) -> Runner:
    """The same artifact as ``runner`` on ``backend`` (predict --backend); the reporter hears what ran."""
    path = getattr(runner, "path", None)
    if path is None:
        raise InputError("--backend applies to exported artifacts (ONNX, engines); a checkpoint runs on PyTorch")
    runner = runners.open(path, backend)
    if runner.name == "openvino":
        reporter.note(f"{path.name} on OpenVINO {runner.version}, computed in {runner.precision_text}")
    return runner


def record_parity(manifest: Manifest, report: ParityReport) -> None:
    """Store each artifact's parity result in its manifest entry (as the export does)."""
    for art in report.artifacts:
        if manifest.artifact(art.path) is not None:
            info = report.data_info or {}
            manifest.update_artifact(art.path, parity={
                "reference": report.reference, "data": report.data, "n_images": report.n_images,
                "metrics": art.metrics, "passed": art.passed, "failures": art.failures,
                **({"held_out": info.get("held_out"), "domain": info.get("domain", True)} if info else {}),
                **({"note": art.note} if art.note else {})})


MAX_SOURCE_HASH_BYTES = 8 << 30  # hashing runs at ~1 GB/s; a checkpoint beyond this is not a classifier we reload


def source_unusable(manifest: Manifest) -> str | None:
    """Why the manifest's source checkpoint cannot stand as the reference (not here, too large to check, changed
    since export), or None when it is the file that was exported."""
    source = manifest.source_path()
    if source.is_symlink() or not source.is_file():
        return f"the source checkpoint {source} is not here"
    if source.stat().st_size > MAX_SOURCE_HASH_BYTES:
        return f"the source checkpoint {source} is too large to check against the manifest"
    from deploykit.files import sha256_file

    if sha256_file(source) != manifest.source.get("sha256"):
        return f"{source} changed since export (sha256 differs)"
    return None


def reference_runner(folder: Path, manifest: Manifest, *, reporter: Reporter = SILENT, loaded=None,
                     allow_pickle: bool = False, model_def: str | None = None,
                     channels_last: bool = False) -> tuple[Runner, str]:
    """The PyTorch model the folder was exported from; the FP32 ONNX when torch or the source is missing.

    A manifest is data: the ``allow_pickle`` / ``model_def`` it recorded are never honoured by themselves. When the
    source needs them, the user repeats the flag on this command line, or the FP32 ONNX stands in (and we say why).
    """
    if loaded is not None:
        from deploykit.runners.torch import TorchRunner, reference_device

        return TorchRunner(loaded.module, manifest.preprocessing.shape, reference_device(),
                           channels_last=channels_last), "pytorch"
    source = manifest.source_path()
    stored = manifest.source.get("options") if isinstance(manifest.source.get("options"), dict) else {}
    reason = None
    try:
        import torch  # noqa: F401
    except ImportError:
        reason = "torch is not installed"
    needs = manifest.source_needs()
    if reason is None and needs == "--model-def" and not model_def:
        reason = ("the source was exported with --model-def, which runs code; a manifest cannot ask for that -- "
                  "pass --model-def again to use the PyTorch reference")
    if reason is None and needs == "--trust-code" and not allow_pickle:
        reason = ("the source is code (a pickled module, TorchScript or a .pt2 program), which a manifest cannot ask "
                  "to load -- pass --trust-code (or --allow-pickle) again if you trust the file")
    if reason is None:
        reason = source_unusable(manifest)
    if reason is None:
        from deploykit.models.loading import LoadOptions, load_model
        from deploykit.runners.torch import TorchRunner

        options = LoadOptions.from_dict(stored)
        options.allow_pickle = allow_pickle
        options.model_def = model_def
        loaded = load_model(source, options)
        return TorchRunner(loaded.module, manifest.preprocessing.shape, channels_last=channels_last), "pytorch"
    fp32 = manifest.find(precision="fp32", kind="onnx")
    if fp32 is None:
        raise InputError(f"no PyTorch reference ({reason}) and no FP32 ONNX in {folder} to compare against")
    reporter.warn(f"{reason}: comparing against {fp32.path} instead of PyTorch")
    runner = runners.open(manifest.file(fp32), Backend.ort)
    runner.reason = reason
    return runner, fp32.path


