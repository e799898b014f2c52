"""The export folder, end to end: load -> ONNX -> manifest -> verify (:func:`export_folder`); later, on the
device, an engine built into the same folder, verified and recorded (:func:`build_folder`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploykit import __version__
from deploykit.data import resolve_images
from deploykit.errors import InputError
from deploykit.export import DEFAULT_OPSET, export_onnx, onnx_io
from deploykit.files import sha256_file
from deploykit.folder import folder_lock, lock_path, previous_export, staged_export, terminate_as_interrupt
from deploykit.manifest import Manifest
from deploykit.models.loading import LoadedModel, LoadOptions, load_model
from deploykit.parity import ParityReport
from deploykit.messages import SILENT, Reporter
from deploykit.timings import Timings
from deploykit.verify import record_parity, verify_folder


@dataclass
class ExportResult:
    folder: Path
    manifest: Manifest
    loaded: LoadedModel
    report: ParityReport | None
    precision: object | None = None  # deploykit.precision.PrecisionResult when --fp16/--int8 were asked
    trt_checks: list | None = None  # deploykit.tensorrt.check.ArtifactCheck per ONNX artifact (--trt-targets)
    timings: Timings | None = None  # seconds per stage, also in the manifest's ``timings``


GENERIC_STEMS = {"best", "last", "model", "checkpoint", "ckpt", "weights", "final", "latest", "pytorch_model",
                 "run", "runs", "output", "outputs", "checkpoints", "exports", "export", "model_best", "best_model"}


def default_out(model_path: Path, arch: str | None = None) -> Path:
    """``exports/<name>``: the checkpoint's stem, or for a generic stem (best.pth, last.pth, model.pt...) its run
    folder's name, or else the architecture -- so two training runs do not land in the same folder."""
    path = Path(model_path)
    for name in (path.stem, path.resolve().parent.name, arch or ""):
        if name and name.lower() not in GENERIC_STEMS and name not in (".", ".."):
            return Path("exports") / name
    return Path("exports") / (path.stem or "model")


def _same_source(previous: Manifest, model_path: Path, sha256: str) -> bool:
    if previous.source.get("sha256") == sha256:
        return True
    try:
        return previous.source_path().resolve() == Path(model_path).resolve()
    except (OSError, ValueError):
        return False


def export_folder(model_path: Path, *, out: Path | None = None, options: LoadOptions | None = None,
                  opset: int = DEFAULT_OPSET, batch: int = 1, dynamic_batch: bool = False, verify: bool = True,
                  data: Path | None = None, reporter: Reporter = SILENT, precision=None,
                  force: bool = False, max_images: int | None = None, evidence_images: bool = True,
                  trt_targets: list | None = None) -> ExportResult:
    """Export ``model_path`` into an export folder, as one transaction (see :mod:`deploykit.folder`): the folder
    appears (or is replaced) only when every artifact is written. ``force`` replaces another source's export, and
    keeps (under another name) a file in the folder that deploykit did not write where the export would replace or
    remove it. ``trt_targets`` (:class:`deploykit.tensorrt.check.Target`): check every ONNX artifact against those
    TensorRT versions' operator tables and record ``tensorrt_ready`` per artifact in the manifest."""
    options = options or LoadOptions()
    model_path = Path(model_path)
    if out is not None and (Path(out).exists() or lock_path(Path(out)).exists()):
        # an --out that is a file, holds other files, or has an export running into it: refused now, not after
        # seconds of loading the model (checked again below, under the lock, for the export itself)
        with folder_lock(Path(out)):
            previous_export(Path(out))
    timings = Timings()
    with timings.stage("inputs"):
        if verify and data is not None:
            resolve_images(data, reporter=reporter)  # a bad --data fails before minutes of export work
        calib_images = None
        if precision is not None and precision.any:
            from deploykit.precision import prepare_calibration

            calib_images = prepare_calibration(precision, reporter=reporter)  # likewise a bad --calib
    reporter.status(f"loading {model_path}")
    with timings.stage("load"):
        loaded = load_model(model_path, options)
    for msg in loaded.notes:
        reporter.note(msg)
    if precision is not None and precision.int8 and loaded.kind == "deploykit":
        from dataclasses import replace as _replace

        from deploykit.train import trained_on_grayscale

        precision = _replace(precision, grayscale_trained=trained_on_grayscale(loaded.extra))
    with timings.stage("load"):
        source_sha = sha256_file(model_path)
    final = Path(out) if out else default_out(model_path, loaded.arch)
    kept: list[str] = []
    with terminate_as_interrupt(), folder_lock(final), staged_export(final, force=force, notes=kept) as (folder,
                                                                                                      previous):
        if previous is not None and not force and not _same_source(previous, model_path, source_sha):
            raise InputError(f"{final} holds the export of another model ({Path(previous.source['path']).name}); "
                             "choose another --out, or pass --force to replace it")
        result = _export_into(folder, final, model_path, source_sha, loaded, options, opset=opset, batch=batch,
                              dynamic_batch=dynamic_batch, verify=verify, data=data, reporter=reporter,
                              precision=precision, calib_images=calib_images, max_images=max_images,
                              evidence_images=evidence_images, trt_targets=trt_targets, timings=timings)
        if previous is not None:
            dropped = sorted({a.path for a in previous.artifacts} - {a.path for a in result.manifest.artifacts})
            if dropped:
                reporter.note("replaced the earlier export; its artifacts the new one does not make are gone: "
                     + ", ".join(dropped))
    for msg in kept:
        reporter.note(msg)
    result.manifest.folder = final
    result.folder = final
    here = os.getcwd()
    if previous is not None and (here == os.path.abspath(final) or here.startswith(os.path.abspath(final) + os.sep)):
        reporter.note(f"{final} was replaced as a whole folder; a shell that was inside it still sees the old one: "
             f'cd "{here}"')
    return result


def _export_into(folder: Path, final: Path, model_path: Path, source_sha: str, loaded: LoadedModel,
                 options: LoadOptions, *, opset, batch, dynamic_batch, verify, data, reporter: Reporter, precision,
                 calib_images, max_images: int | None = None, evidence_images: bool = True, trt_targets=None,
                 timings: Timings | None = None) -> ExportResult:
    timings = timings if timings is not None else Timings()
    reporter.status("exporting ONNX")
    with timings.stage("onnx"):
        onnx_path = export_onnx(loaded, folder / "model.onnx", opset=opset, batch=batch,
                                dynamic_batch=dynamic_batch)
        io = onnx_io(onnx_path)
        onnx_sha = sha256_file(onnx_path)
    manifest = Manifest(
        source={"path": _relative_to(model_path, final), "name": model_path.name, "sha256": source_sha,
                "kind": loaded.kind, "options": options.to_dict()},
        model={"arch": loaded.arch, "num_classes": loaded.num_classes, "class_names": loaded.class_names,
               **({"best_val_acc": loaded.extra["best_val_acc"]} if "best_val_acc" in loaded.extra else {})},
        input={**io["input"], "dynamic_batch": dynamic_batch},
        output=io["output"],
        preprocess=loaded.preprocess.to_dict(),
        opset=io["opset"],
        folder=folder,  # the staging folder while the export is being written (artifacts are checked in it)
    )
    manifest.versions["deploykit"] = __version__
    manifest.set_artifact({"path": "model.onnx", "precision": "fp32", "sha256": onnx_sha,
                           "bytes": onnx_path.stat().st_size, "parity": None})
    precision_result = None
    vdata = None
    if verify or (precision is not None and precision.any):
        with timings.stage("verification_images"):
            vdata, calib_images = _verification_images(loaded, precision, calib_images, data,
                                                       onnx_path.stat().st_size, max_images=max_images,
                                                       evidence_images=evidence_images, reporter=reporter)
    if precision is not None and precision.any:
        from dataclasses import replace

        from deploykit.precision import add_precision_artifacts

        precision = precision if verify else replace(precision, check=False)
        precision_result = add_precision_artifacts(
            folder, manifest, loaded.preprocess, precision, calib_images=calib_images, data=data,
            class_names=loaded.class_names, num_classes=loaded.num_classes, reporter=reporter,
            verify_set=vdata.selection.images, verify_batch=vdata.batch, timings=timings)
        for msg in precision_result.notes:
            reporter.note(msg)
    report = None
    if verify:
        reporter.status(f"verifying against PyTorch on {vdata.n_images} images")
        known = None
        if precision_result is not None and precision_result.logits:
            from deploykit.verify import KnownLogits

            known = KnownLogits(precision_result.logits_digest, precision_result.logits)
        with timings.stage("verify"):
            report = verify_folder(folder, manifest=manifest, loaded=loaded, reporter=reporter,
                                   overrides=getattr(precision, "overrides", None), known=known, images=vdata)
        with timings.stage("evidence"):
            from deploykit.evidence import write_evidence

            write_evidence(folder, manifest, vdata, report.reference_logits, images=evidence_images)
        record_parity(manifest, report)
    checks = None
    if trt_targets:
        from deploykit.tensorrt.check import check_manifest, record_checks

        reporter.status("checking the ONNX graphs against TensorRT's operator tables")
        with timings.stage("tensorrt_check"):
            checks = check_manifest(manifest, trt_targets)
        record_checks(manifest, checks)
    manifest.timings = timings.to_json()
    manifest.save(folder)
    return ExportResult(folder, manifest, loaded, report, precision_result, trt_checks=checks, timings=timings)


@dataclass
class BuildResult:
    engine: object  # deploykit.tensorrt.build.EngineResult: the engine's path, manifest entry, build facts, notes
    report: ParityReport | None  # None with verify=False


def build_folder(folder: Path, precision, *, profile=None, workspace_gib: float | None = None,
                 timing_cache: Path | None = None, data: Path | None = None, verify: bool = True, loaded=None,
                 done: str | None = None, trt_check: bool = True, reporter: Reporter = SILENT,
                 on_built: Callable[[object], None] | None = None, probe=None) -> BuildResult:
    """Build ``model.<precision>.engine`` from an export folder's ONNX (:mod:`deploykit.tensorrt.build`), then
    verify it (``data``: other images than the folder's evidence; ``loaded``: the in-memory PyTorch model) and
    record its verdict in the manifest -- holding the folder lock from the build to the manifest's save, so no
    other export or build writes the folder between them. ``on_built(engine)`` runs once the engine is written,
    before it is verified (the CLI prints the build's facts there); ``probe``: the TensorRT host probe (tests)."""
    from deploykit.tensorrt.build import build_in_locked_folder, check_workspace
    from deploykit.tensorrt.host import probe_host
    from deploykit.tensorrt.profile import EnginePrecision

    folder, precision = Path(folder), EnginePrecision(precision)
    check_workspace(workspace_gib)
    with folder_lock(folder, "build"):
        engine = build_in_locked_folder(folder, precision, profile=profile, workspace_gib=workspace_gib,
                                        timing_cache=timing_cache, reporter=reporter, done=done,
                                        probe=probe or probe_host, trt_check=trt_check)
        if on_built is not None:
            on_built(engine)
        if not verify:
            return BuildResult(engine, None)
        reporter.status(f"verifying {engine.path.name}")  # a step the heartbeat names while it runs
        manifest = Manifest.load(folder)  # as the build left it: verified, recorded and saved under the same lock
        report = verify_folder(folder, data=data, reporter=reporter, only=[engine.path.name], loaded=loaded,
                               manifest=manifest)
        record_parity(manifest, report)
        manifest.save(folder)
    return BuildResult(engine, report)


def _verification_images(loaded: LoadedModel, precision, calib_pool, data, fp32_bytes: int, *,
                         max_images: int | None, evidence_images: bool, reporter: Reporter):
    """The export's verification images (:func:`deploykit.evidence.choose_images`), preprocessed, and the pool
    calibration then samples from (the held-out images removed)."""
    from deploykit.evidence import choose_images, image_budget, load_selection
    from deploykit.parity import accuracy_labels

    pre = loaded.preprocess
    request = precision.resolved() if precision is not None and precision.int8 else None
    variants = {} if precision is None else {"fp16": int(precision.fp16),
                                             "int8": len(precision.int8_for) if precision.int8 else 0}
    selection = choose_images(
        data, pre, calib_pool=calib_pool, calib=None if request is None else request.calib,
        calib_size=0 if request is None else request.calib_size, min_calib=0 if request is None else request.min_calib,
        max_images=max_images, byte_cap=image_budget(pre, fp32_bytes, variants) if evidence_images else None,
        reporter=reporter)
    reporter.note(f"verification images: {selection.why}")
    labels = accuracy_labels(selection.images, loaded.class_names, loaded.num_classes, reporter)
    vdata = load_selection(selection, pre, labels)
    return vdata, selection.calib if selection.calib is not None else calib_pool


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to the export folder (so the folder names no home directory and can move together with
    its checkpoint); absolute when they are on different drives."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:
        return str(Path(path).resolve())
