"""One verification: reference -> compare -> record.

:func:`verify_folder` chooses the reference (:mod:`deploykit.verify.reference`), runs it and each artifact on the
same images and judges them (:func:`compare_runners`); :func:`record_parity` writes the verdicts into the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit import runners
from deploykit.errors import InputError, MissingDependencyError
from deploykit.evidence import VerificationData
from deploykit.manifest import Artifact, Manifest
from deploykit.parity import ArtifactReport, ParityReport, Precision, Tolerance, assess, batch_digest, \
    degenerate_reference
from deploykit.messages import SILENT, Reporter
from deploykit.runners.base import Backend, Runner
from deploykit.verify.fp16 import explain_fp16_failures
from deploykit.verify.openvino import LastLogits, Run, describe_ov_runs, ort_twin, with_bf16
from deploykit.verify.reference import FixedLogits, Reference, choose_reference, verification_data


@dataclass(frozen=True)
class KnownLogits:
    """Logits an earlier stage of the same export computed with ONNX Runtime on the verification images
    (``digest``: :func:`batch_digest`): verification uses them instead of running those files again."""

    digest: str | None
    logits: dict[str, np.ndarray]


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
    verification images already chosen (export); ``known``: logits an earlier stage computed on them;
    ``recheck``: also run the PyTorch source and compare it with the recorded logits (``reference_check``).

    ``backend``: run every artifact on that runtime instead of the one it is for (ONNX on ``ort``, engines on
    ``trt``). ``ov``: the ONNX artifacts on OpenVINO, with the extra runs of :mod:`deploykit.verify.openvino`;
    each entry says what ran (``backend``, ``inference_precision``, ``layer_precisions``)."""
    folder = Path(folder)
    backend = None if backend is None else Backend(backend)
    manifest = manifest if manifest is not None else Manifest.load(folder)
    vdata = images if images is not None else verification_data(manifest, data, max_images=max_images,
                                                                reporter=reporter)
    if known is not None and (backend is not None or known.digest != batch_digest(vdata.batch)):
        known = None  # other images or another runtime: run everything
    ref = choose_reference(folder, manifest, vdata, data=data, reporter=reporter, loaded=loaded,
                           allow_pickle=allow_pickle, model_def=model_def, recheck=recheck)
    runs = [(a.path, a.precision, "f32") for a in judged_artifacts(manifest, ref, only=only, backend=backend)]
    if backend is Backend.ov:
        runs = with_bf16(runs)  # without OpenVINO: MissingDependencyError (exit 3) here
    candidates = _open_runs(manifest, runs, backend=backend, known=known, only=only, threads=threads,
                            reporter=reporter)
    try:
        if not candidates:
            raise InputError(f"nothing in {folder} can be verified on this machine")
        report = compare_runners(ref.runner, candidates, vdata.batch, labels=vdata.labels, overrides=overrides,
                                 reference_name=ref.name, data_name=vdata.info["source"])
        report.kind, report.data_info, report.reference_check = ref.kind, dict(vdata.info), ref.check
        if backend is Backend.ov:
            describe_ov_runs(report, candidates)
        explain_fp16_failures(report, getattr(ref.runner, "module", None), vdata.batch)
    finally:  # sessions, compiled models and engines go now, not when the garbage collector gets to them
        for _, _, runner in candidates:
            runner.close()
    return report


def judged_artifacts(manifest: Manifest, ref: Reference, *, only: Sequence[str] | None = None,
                     backend: Backend | None = None) -> list[Artifact]:
    """The artifacts to judge: every ONNX file and engine (those in ``only``), those ``backend`` runs, less the
    FP32 ONNX where it stands in as the reference (on OpenVINO it is another run: judged)."""
    folder = manifest.folder
    entries = [a for a in manifest.artifacts if a.kind is not None and (only is None or a.path in only)]
    if not entries:
        raise InputError(f"{folder} has no ONNX artifacts or engines; run `deploykit export` again")
    if backend is not None:
        entries = for_backend(entries, backend, folder, only)
    if ref.name in {a.path for a in entries} and backend is not Backend.ov:
        entries = [a for a in entries if a.path != ref.name]
        if not entries:
            raise InputError(f"no PyTorch reference ({getattr(ref.runner, 'reason', 'see above')}) and {ref.name} "
                             "is the only artifact: nothing to compare")
    return entries


def for_backend(entries: list[Artifact], backend: Backend, folder: Path,
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


def _open_runs(manifest: Manifest, runs: list[Run], *, backend: Backend | None, known: KnownLogits | None,
               only: Sequence[str] | None, threads: int | None, reporter: Reporter) -> list[tuple[str, str, Runner]]:
    """A runner per run (the logits ``known`` already holds stand in for a run); one that cannot open here is
    skipped with a warning, unless named in ``only`` (an engine without TensorRT, a file OpenVINO refuses)."""
    candidates: list[tuple[str, str, Runner]] = []
    for path, precision, hint in runs:
        if known is not None and path in known.logits and hint == "f32":
            manifest.file(path)  # still the file it was (size, sha256)
            candidates.append((path, precision, FixedLogits(known.logits[path], manifest.preprocessing.shape)))
            continue
        try:
            runner = runners.open(manifest.file(path), backend, reporter=reporter, inference_precision=hint,
                                  threads=threads)
        except (MissingDependencyError, InputError) as exc:
            if only is not None or isinstance(exc, InputError) and backend is not Backend.ov:
                raise
            reporter.warn(f"skipping {path}{'' if hint == 'f32' else f' in {hint}'}: {exc}")
            continue
        if backend is not Backend.ov:
            candidates.append((path, precision, runner))
            continue
        candidates.append((path, precision, LastLogits(runner)))  # describe_ov_runs reads what each run gave
        if precision == Precision.INT8.value:  # the ONNX Runtime twin: reported beside, not judged
            candidates += ort_twin(manifest, path, precision, threads)
    return candidates


def parity_record(report: ParityReport, art: ArtifactReport) -> dict:
    """The manifest's ``parity`` record of one judged artifact (its verdict, the reference and the images)."""
    info = report.data_info or {}
    return {"reference": report.reference, "data": report.data, "n_images": report.n_images,
            "metrics": art.metrics, "passed": art.passed, "failures": art.failures,
            **({"held_out": info.get("held_out"), "domain": info.get("domain", True)} if info else {}),
            **({"note": art.note} if art.note else {})}


def record_parity(manifest: Manifest, report: ParityReport) -> None:
    """Store each judged artifact's verdict in its manifest entry (those the manifest lists)."""
    for art in report.artifacts:
        if manifest.artifact(art.path) is not None:
            manifest.update_artifact(art.path, parity=parity_record(report, art))


def on_backend(runner: Runner, backend: Backend | str, reporter: Reporter = SILENT) -> Runner:
    """The same artifact as ``runner`` on ``backend`` (predict --backend); the reporter hears what ran."""
    path = getattr(runner, "path", None)
    if path is None:
        raise InputError("--backend applies to exported artifacts (ONNX, engines); a checkpoint runs on PyTorch")
    runner = runners.open(path, backend)
    if runner.name == "openvino":
        reporter.note(f"{path.name} on OpenVINO {runner.version}, computed in {runner.precision_text}")
    return runner
