"""The reference an export folder's artifacts are judged against, and the images they are judged on.

In order of preference: PyTorch's logits recorded at export on the folder's evidence images (no torch needed),
the PyTorch source run here (when it is still the file that was exported), else the FP32 ONNX standing in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit import runners
from deploykit.errors import InputError
from deploykit.evidence import VerificationData, held_out_text, images_for, recorded_data, recorded_logits_for
from deploykit.files import sha256_file
from deploykit.manifest import Manifest
from deploykit.models.loading import LoadOptions, load_model
from deploykit.parity import TOLERANCES, Precision, accuracy_labels, compare_logits, judge
from deploykit.messages import SILENT, Reporter
from deploykit.runners.base import Backend, Runner
from deploykit.runners.torch import TorchRunner, reference_device

RECORDED = "pytorch (recorded)"  # the reference name of PyTorch's logits read from the folder's evidence
MAX_SOURCE_HASH_BYTES = 8 << 30  # hashing runs at ~1 GB/s; a checkpoint beyond this is not a classifier we reload


class FixedLogits(Runner):
    """Logits computed before (recorded at export, or by an earlier stage), standing in for a run on the same
    images: ``infer`` returns them whatever it is given."""

    name = "onnxruntime"

    def __init__(self, logits: np.ndarray, input_shape) -> None:
        self.logits, self.input_shape = logits, input_shape

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.logits

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - infer is overridden
        return self.logits


@dataclass
class Reference:
    """What the artifacts are judged against: ``name`` as reports say it (``pytorch``, :data:`RECORDED`, or the
    FP32 ONNX's file name), ``kind`` as the JSON says it (``pytorch-recorded``, ``pytorch``, ``onnx-fp32``) and
    ``check`` the ``--recheck-reference`` result, when asked."""

    runner: Runner
    name: str
    kind: str
    check: dict | None = None


def verification_data(manifest: Manifest, data: Path | str | None = None, *, max_images: int | None = None,
                      reporter: Reporter = SILENT) -> VerificationData:
    """The images a command judges on: the folder's evidence (PyTorch's recorded logits on them) unless ``data``
    overrides; ``data`` whose pixels are exactly the evidence images (left out with --no-evidence-images) gets the
    recorded logits too. A folder exported before evidence was recorded falls back to the bundled photos."""
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


def choose_reference(folder: Path, manifest: Manifest, vdata: VerificationData, *, data: Path | None = None,
                     reporter: Reporter = SILENT, loaded=None, allow_pickle: bool = False,
                     model_def: str | None = None, recheck: bool = False) -> Reference:
    """PyTorch's recorded logits where ``vdata`` has them (and no in-memory model is given), with ``recheck``
    also the source run here against them; else :func:`reference_runner`."""
    if vdata.recorded is not None and loaded is None:
        check = _recheck(folder, manifest, vdata, allow_pickle, model_def) if recheck else None
        return Reference(FixedLogits(vdata.recorded, manifest.preprocessing.shape), RECORDED, "pytorch-recorded",
                         check)
    runner, name = reference_runner(folder, manifest, reporter=reporter, loaded=loaded, allow_pickle=allow_pickle,
                                    model_def=model_def, channels_last=True)
    kind = "pytorch" if name == "pytorch" else "onnx-fp32"
    if data is not None and manifest.evidence is not None and kind == "onnx-fp32":
        reporter.note(f"these are not the folder's evidence images: the reference logits are recomputed with "
                      f"{name}, not read from PyTorch's record")
    return Reference(runner, name, kind)


def _recheck(folder: Path, manifest: Manifest, vdata: VerificationData, allow_pickle: bool,
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


def source_unusable(manifest: Manifest) -> str | None:
    """Why the manifest's source checkpoint cannot stand as the reference (not here, too large to check, changed
    since export), or None when it is the file that was exported."""
    source = manifest.source_path()
    if source.is_symlink() or not source.is_file():
        return f"the source checkpoint {source} is not here"
    if source.stat().st_size > MAX_SOURCE_HASH_BYTES:
        return f"the source checkpoint {source} is too large to check against the manifest"
    if sha256_file(source) != manifest.source.get("sha256"):
        return f"{source} changed since export (sha256 differs)"
    return None


def _why_not_pytorch(manifest: Manifest, allow_pickle: bool, model_def: str | None) -> str | None:
    """Why the PyTorch source cannot be loaded here, or None. A manifest is data: the ``allow_pickle`` /
    ``model_def`` it recorded are never honoured by themselves; the user repeats the flag on this command line."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed"
    needs = manifest.source_needs()
    if needs == "--model-def" and not model_def:
        return ("the source was exported with --model-def, which runs code; a manifest cannot ask for that -- "
                "pass --model-def again to use the PyTorch reference")
    if needs == "--trust-code" and not allow_pickle:
        return ("the source is code (a pickled module, TorchScript or a .pt2 program), which a manifest cannot ask "
                "to load -- pass --trust-code (or --allow-pickle) again if you trust the file")
    return source_unusable(manifest)


def reference_runner(folder: Path, manifest: Manifest, *, reporter: Reporter = SILENT, loaded=None,
                     allow_pickle: bool = False, model_def: str | None = None,
                     channels_last: bool = False) -> tuple[Runner, str]:
    """The PyTorch model the folder was exported from (``loaded``: already in memory); the FP32 ONNX when torch
    or the source is missing, or the source needs a flag this command line did not repeat (we say why)."""
    if loaded is not None:
        return TorchRunner(loaded.module, manifest.preprocessing.shape, reference_device(),
                           channels_last=channels_last), "pytorch"
    reason = _why_not_pytorch(manifest, allow_pickle, model_def)
    if reason is None:
        stored = manifest.source.get("options") if isinstance(manifest.source.get("options"), dict) else {}
        options = LoadOptions.from_dict(stored)
        options.allow_pickle = allow_pickle
        options.model_def = model_def
        loaded = load_model(manifest.source_path(), options)
        return TorchRunner(loaded.module, manifest.preprocessing.shape, channels_last=channels_last), "pytorch"
    fp32 = manifest.find(precision="fp32", kind="onnx")
    if fp32 is None:
        raise InputError(f"no PyTorch reference ({reason}) and no FP32 ONNX in {folder} to compare against")
    reporter.warn(f"{reason}: comparing against {fp32.path} instead of PyTorch")
    runner = runners.open(manifest.file(fp32), Backend.ort)
    runner.reason = reason
    return runner, fp32.path
