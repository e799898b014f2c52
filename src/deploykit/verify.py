"""Compare artifacts with their reference and judge them against one tolerance table per precision.

Validation collects every failing metric of every artifact and reports them together (as Optimum's
``validate_model_outputs`` does), rather than stopping at the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from deploykit.data import ImageSet, verification_set
from deploykit.errors import InputError
from deploykit.manifest import Manifest
from deploykit.runners.base import Runner


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT8_CPU = "int8-cpu"


@dataclass(frozen=True)
class Tolerance:
    """One precision's gates. The logit-difference gate scales with the reference's logits, as numpy's
    ``allclose`` does: ``max_abs_diff <= max_abs_diff + max_rel_diff * max|reference logit|`` (atol + rtol x
    scale), so a model whose logits reach 1e12 is not failed by ordinary float32 rounding, and one whose logits
    are ~1 is held to about ``max_abs_diff``. Cosine, top-1 agreement and accuracy do not depend on the scale."""

    cosine_min: float | None = None  # lower bound on the per-image cosine similarity of logits
    max_abs_diff: float | None = None  # atol: upper bound on the largest absolute logit difference ...
    max_rel_diff: float | None = None  # rtol: ... plus this times the largest |reference logit|
    top1_agreement: float | None = None  # lower bound on the share of images with the same top-1 class
    accuracy_drop: float | None = None  # upper bound, in points, when the data carries labels

    def max_diff_allowed(self, scale: float) -> float | None:
        """The largest absolute logit difference allowed for a reference whose largest |logit| is ``scale``."""
        if self.max_abs_diff is None and self.max_rel_diff is None:
            return None
        return (self.max_abs_diff or 0.0) + (self.max_rel_diff or 0.0) * scale


# FP32: 1e-4 relative is ~800 float32 ulps of the largest logit, room for the rounding of a deep net's sums
# (measured: Inception v3 at random init 5e-7 relative with logits ~2e12; ResNet-152 3e-4 at logits ~5), far
# below what a wrong graph gives (1e-2 and up).
TOLERANCES: dict[Precision, Tolerance] = {
    Precision.FP32: Tolerance(cosine_min=0.99999, max_abs_diff=1e-3, max_rel_diff=1e-4, top1_agreement=1.0),
    Precision.FP16: Tolerance(cosine_min=0.9999, top1_agreement=0.99),
    Precision.INT8: Tolerance(top1_agreement=0.97, accuracy_drop=1.0),
    Precision.INT8_CPU: Tolerance(top1_agreement=0.97, accuracy_drop=1.0),
}


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[Precision(precision)]
    except ValueError:
        return Tolerance()


def compare_logits(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> dict[str, float]:
    """Closeness of two ``N x classes`` logit arrays.

    ``top5_agreement`` is the mean overlap of the two top-k class sets (k = min(5, classes)), 1.0 when every
    image has the same top-k classes in any order.
    """
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.shape != cand.shape:
        raise InputError(f"output shapes differ: reference {ref.shape}, artifact {cand.shape}")
    diff = np.abs(ref - cand)
    finite = np.isfinite(cand).all()
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(norms > 0, (ref * cand).sum(axis=1) / np.where(norms > 0, norms, 1.0),
                   np.where(np.abs(ref).sum(axis=1) == np.abs(cand).sum(axis=1), 1.0, 0.0))
    k = min(k, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    top_cand = np.argsort(-cand, axis=1)[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand)]
    scale = float(np.abs(ref).max()) if np.isfinite(ref).all() else float("inf")
    max_diff = float(diff.max()) if finite else float("inf")
    return {
        "max_abs_diff": max_diff,
        "max_rel_diff": max_diff / scale if 0 < scale < float("inf") else (0.0 if max_diff == 0 else float("inf")),
        "reference_max_abs": scale,
        "mean_abs_diff": float(diff.mean()) if finite else float("inf"),
        "cosine_min": float(np.nan_to_num(cos, nan=0.0).min()) if finite else 0.0,
        "top1_agreement": float((top_ref[:, 0] == top_cand[:, 0]).mean()),
        "top5_agreement": float(np.mean(overlap)),
    }


def judge(metrics: dict[str, float], tol: Tolerance) -> list[str]:
    """Every way ``metrics`` misses ``tol``; empty when it passes."""
    failures = []
    if tol.cosine_min is not None and not metrics["cosine_min"] >= tol.cosine_min:
        failures.append(f"cosine_min {metrics['cosine_min']:.6f} < {tol.cosine_min}")
    scale = metrics.get("reference_max_abs", 0.0)
    allowed = tol.max_diff_allowed(scale if np.isfinite(scale) else 0.0)  # a non-finite reference: atol alone
    if allowed is not None and not metrics["max_abs_diff"] <= allowed:
        rel = f" + {tol.max_rel_diff:g} x {metrics['reference_max_abs']:.3g} (max |reference logit|)" \
            if tol.max_rel_diff and np.isfinite(scale) else ""
        failures.append(f"max_abs_diff {metrics['max_abs_diff']:.3g} > {tol.max_abs_diff or 0:g}{rel}")
    if tol.top1_agreement is not None and not metrics["top1_agreement"] >= tol.top1_agreement:
        failures.append(f"top1_agreement {metrics['top1_agreement']:.4f} < {tol.top1_agreement}")
    if tol.accuracy_drop is not None and "accuracy_drop" in metrics and \
            not metrics["accuracy_drop"] <= tol.accuracy_drop:
        failures.append(f"accuracy_drop {metrics['accuracy_drop']:.2f} pts > {tol.accuracy_drop}")
    return failures


# A reference whose logits cannot show an error: parity with it proves little, whatever the gates say.
DEGENERATE_SCALE = 1e-3  # max |logit| below the FP32 atol: any artifact near zero would pass
DEGENERATE_SPREAD = 1e-3  # logits vary across the images by less than this share of their scale
DEGENERATE_MARGIN = 1e-3  # median top-1 margin below this share of the logit scale: top-1 is a coin toss


def degenerate_reference(reference: np.ndarray) -> str | None:
    """One line when the reference's logits are non-finite, vanishing, nearly constant across the images, or
    near ties between the top two classes on most images; None for a model whose outputs carry information.
    Random-init nets do this (MobileNet/EfficientNet logits of 1e-9 to 1e-12, GoogLeNet/ShuffleNet outputs that
    do not change with the image); trained ones do not (their logits are O(1) and differ per image)."""
    ref = np.asarray(reference, np.float64)
    tail = "untrained weights? -- parity here proves little"
    if not np.isfinite(ref).all():
        return f"the reference model's logits are not finite (NaN/inf) -- {tail}"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    if scale < DEGENERATE_SCALE:
        return f"the reference model's logits vanish (max |logit| {scale:.1e}) -- {tail}"
    if ref.shape[0] >= 2:
        spread = float((ref.max(axis=0) - ref.min(axis=0)).max()) / scale
        if spread < DEGENERATE_SPREAD:
            return (f"the reference model's outputs barely depend on the input (logits vary by {spread:.1e} of their "
                    f"scale across {ref.shape[0]} images) -- {tail}")
    if ref.shape[1] >= 2:
        top2 = np.sort(ref, axis=1)[:, -2:]
        margin = float(np.median(top2[:, 1] - top2[:, 0])) / scale
        if margin < DEGENERATE_MARGIN:
            return (f"the reference model's top-1 class is a near tie on most images (median margin {margin:.1e} "
                    f"of the logit scale) -- {tail}")
    return None


@dataclass
class ArtifactReport:
    path: str
    precision: str
    metrics: dict[str, float]
    passed: bool
    failures: list[str] = field(default_factory=list)
    note: str | None = None  # what the metrics cannot say (e.g. ONNX Runtime cannot stand in for TensorRT)

    def to_json(self) -> dict:
        out = {"path": self.path, "precision": self.precision, "metrics": self.metrics, "passed": self.passed}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class ParityReport:
    artifacts: list[ArtifactReport]
    reference: str
    data: str
    n_images: int
    reference_note: str | None = None  # degenerate_reference(); also every artifact's note

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    def to_json(self) -> dict:
        return {"artifacts": [a.to_json() for a in self.artifacts]}

    def failure_summary(self) -> str:
        lines = [f"{a.path}: {'; '.join(a.failures)}" for a in self.artifacts if not a.passed]
        if lines and self.reference_note:
            lines.append(self.reference_note)
        return " | ".join(lines)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)


def label_indices(images: ImageSet, class_names: Sequence[str] | None, num_classes: int) -> np.ndarray | None:
    """Map ImageFolder labels onto the model's class indices (by name when the model has names)."""
    if images.labels is None or images.class_names is None:
        return None
    if class_names:
        index = {name: i for i, name in enumerate(class_names)}
        missing = [n for n in images.class_names if n not in index]
        if missing:
            raise InputError(f"--data has class folders the model does not know: {', '.join(missing[:5])}; "
                             f"the model's classes are {', '.join(class_names[:10])}")
        return np.array([index[images.class_names[i]] for i in images.labels])
    if len(images.class_names) > num_classes:
        raise InputError(f"--data has {len(images.class_names)} class folders but the model has {num_classes} "
                         "outputs")
    return np.array(images.labels)


def evaluate(reference: Runner, candidates: Sequence[tuple[str, str, Runner]], batch: np.ndarray, *,
             labels: np.ndarray | None = None, overrides: dict[str, Tolerance] | None = None,
             reference_name: str = "pytorch", data_name: str = "") -> ParityReport:
    """Run ``reference`` and each ``(path, precision, runner)`` on ``batch`` and judge them."""
    ref_logits = reference.infer(batch)
    note = degenerate_reference(ref_logits)
    reports = []
    for path, precision, runner in candidates:
        logits = runner.infer(batch)
        metrics = compare_logits(ref_logits, logits)
        if labels is not None:
            metrics["accuracy"] = _accuracy(logits, labels)
            metrics["reference_accuracy"] = _accuracy(ref_logits, labels)
            metrics["accuracy_drop"] = metrics["reference_accuracy"] - metrics["accuracy"]
        tol = (overrides or {}).get(precision) or tolerance_for(precision)
        failures = judge(metrics, tol)
        reports.append(ArtifactReport(path, precision, metrics, not failures, failures, note))
    return ParityReport(reports, reference_name, data_name, int(batch.shape[0]), note)


def verify_folder(folder: Path, *, data: Path | None = None, warn: Callable[[str], None] | None = None,
                  overrides: dict[str, Tolerance] | None = None, max_images: int = 256,
                  only: Sequence[str] | None = None, loaded=None) -> ParityReport:
    """Verify every ONNX artifact and TensorRT engine of an export folder against the PyTorch reference (or the
    FP32 ONNX). Engines are skipped with a warning where TensorRT or a GPU is missing, unless named in ``only``.
    ``loaded``: the in-memory PyTorch model, when the caller has it (export), instead of reloading the source."""
    from deploykit.errors import MissingDependencyError

    folder = Path(folder)
    manifest = Manifest.load(folder)
    pre = manifest.preprocessing
    images = verification_set(data, warn=warn, max_images=max_images)
    batch = images.load(pre)
    reference, ref_name = reference_runner(folder, manifest, warn=warn, loaded=loaded)
    entries = [a for a in manifest.artifacts if _verifiable(a["path"]) and (only is None or a["path"] in only)]
    if not entries:
        raise InputError(f"{folder} has no ONNX artifacts or engines; run `deploykit export` again")
    if ref_name in {a["path"] for a in entries}:  # the FP32 ONNX stands in as reference: not judged by itself
        entries = [a for a in entries if a["path"] != ref_name]
        if not entries:
            raise InputError(f"no PyTorch reference here and {ref_name} is the only artifact: nothing to compare")
    candidates = []
    for a in entries:
        try:
            candidates.append((a["path"], a["precision"], runner_for(folder / a["path"], warn=warn)))
        except MissingDependencyError as exc:
            if only is not None:
                raise
            if warn:
                warn(f"skipping {a['path']}: {exc}")
    if not candidates:
        raise InputError(f"nothing in {folder} can be verified on this machine")
    labels = label_indices(images, manifest.class_names, int(manifest.model["num_classes"]))
    report = evaluate(reference, candidates, batch, labels=labels, overrides=overrides, reference_name=ref_name,
                      data_name=images.source)
    explain_fp16_failures(report, getattr(reference, "module", None), batch)
    return report


def explain_fp16_failures(report: ParityReport, module, batch: np.ndarray) -> None:
    """Each failed FP16 ONNX artifact: when PyTorch FP16 (``module`` in half precision) matches FP32 where
    ONNX Runtime's FP16 run did not, ORT cannot stand in for TensorRT on that graph. Say so in the artifact's
    ``note`` (also a failure line: it is neither passed nor silently failed). No module: nothing to ask."""
    if module is None:
        return
    for art in report.artifacts:
        if art.precision == Precision.FP16.value and not art.passed and art.path.endswith(".onnx"):
            from deploykit.precision.build import fp16_stand_in_caveat

            caveat = fp16_stand_in_caveat(module, batch, art.metrics)
            if caveat:
                art.note = f"{art.note}; {caveat}" if art.note else caveat
                art.failures.append(caveat)


def _verifiable(path: str) -> bool:
    from deploykit.engine import is_engine

    return path.endswith(".onnx") or is_engine(path)


def runner_for(path: Path, *, device: str = "cpu", warn=None) -> Runner:
    """The runner for an artifact file: ONNX Runtime for ``.onnx``, TensorRT for engines (lazy imports)."""
    from deploykit.engine import is_engine

    path = Path(path)
    if is_engine(path):
        from deploykit.runners.trt import TensorRTRunner

        return TensorRTRunner(path, warn=warn)
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, device=device)


def record_parity(manifest: Manifest, report: ParityReport) -> None:
    """Store each artifact's parity result in its manifest entry (as the export does)."""
    for art in report.artifacts:
        entry = manifest.artifact(art.path)
        if entry is not None:
            entry["parity"] = {"reference": report.reference, "data": report.data, "n_images": report.n_images,
                               "metrics": art.metrics, "passed": art.passed, "failures": art.failures,
                               **({"note": art.note} if art.note else {})}


def reference_runner(folder: Path, manifest: Manifest, warn=None, loaded=None) -> tuple[Runner, str]:
    """The PyTorch model the folder was exported from; the FP32 ONNX when torch or the source is missing."""
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    if loaded is not None:
        from deploykit.runners.torch import TorchRunner

        return TorchRunner(loaded.module, manifest.preprocessing.shape), "pytorch"
    source = Path(manifest.source["path"])
    reason = None
    try:
        import torch  # noqa: F401
    except ImportError:
        reason = "torch is not installed"
    if reason is None and not source.is_file():
        reason = f"the source checkpoint {source} is not here"
    if reason is None:
        from deploykit.files import sha256_file

        if sha256_file(source) != manifest.source.get("sha256"):
            reason = f"{source} changed since export (sha256 differs)"
    if reason is None:
        from deploykit.models.loading import LoadOptions, load_model
        from deploykit.runners.torch import TorchRunner

        loaded = load_model(source, LoadOptions.from_dict(manifest.source.get("options", {})))
        return TorchRunner(loaded.module, manifest.preprocessing.shape), "pytorch"
    fp32 = next((a for a in manifest.artifacts if a["precision"] == "fp32" and a["path"].endswith(".onnx")), None)
    if fp32 is None:
        raise InputError(f"no PyTorch reference ({reason}) and no FP32 ONNX in {folder} to compare against")
    if warn:
        warn(f"{reason}: comparing against {fp32['path']} instead of PyTorch")
    return OnnxRuntimeRunner(folder / fp32["path"]), fp32["path"]


def with_overrides(precision: str, **changes) -> dict[str, Tolerance]:
    changes = {k: v for k, v in changes.items() if v is not None}
    return {precision: replace(tolerance_for(precision), **changes)} if changes else {}
