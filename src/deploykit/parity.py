"""Parity math: precisions, the one tolerance table, logit comparison, verdicts and their sample size.

Pure: NumPy in, numbers and verdicts out; no files, no runners. :mod:`deploykit.verify` runs the artifacts and
calls this; the precision stage calls it to judge an INT8 graph against its gate.

Validation collects every failing metric of every artifact and reports them together (as Optimum's
``validate_model_outputs`` does), rather than stopping at the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from deploykit.errors import InputError
from deploykit.messages import SILENT, Reporter


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT8_CPU = "int8-cpu"
    BF16 = "bf16"  # model.onnx computed in bf16 (OpenVINO on CPUs with native bf16)


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
    Precision.BF16: Tolerance(cosine_min=0.99, top1_agreement=0.97),
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
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf logits: judged below, not warned about
        return _compare(ref, cand, k)


def _compare(ref: np.ndarray, cand: np.ndarray, k: int) -> dict[str, float]:
    diff = np.abs(ref - cand)
    finite = np.isfinite(cand).all()
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(norms > 0, (ref * cand).sum(axis=1) / np.where(norms > 0, norms, 1.0),
                   np.where(np.abs(ref).sum(axis=1) == np.abs(cand).sum(axis=1), 1.0, 0.0))
    k = min(k, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    top_cand = np.argsort(-cand, axis=1)[:, :k]
    # a row with NaN/inf names no class (argsort would still pick one): it agrees with nothing
    ok = np.isfinite(cand).all(axis=1) & np.isfinite(ref).all(axis=1)
    overlap = [len(set(a) & set(b)) / k if good else 0.0 for a, b, good in zip(top_ref, top_cand, ok)]
    agree = (top_ref[:, 0] == top_cand[:, 0]) & ok
    scale = float(np.abs(ref).max()) if np.isfinite(ref).all() else float("inf")
    max_diff = float(diff.max()) if finite else float("inf")
    return {
        "max_abs_diff": max_diff,
        "max_rel_diff": max_diff / scale if 0 < scale < float("inf") else (0.0 if max_diff == 0 else float("inf")),
        "reference_max_abs": scale,
        "mean_abs_diff": float(diff.mean()) if finite else float("inf"),
        "cosine_min": float(np.nan_to_num(cos, nan=0.0).min()) if finite else 0.0,
        "top1_agreement": float(agree.mean()),
        "top5_agreement": float(np.mean(overlap)),
        # the sample size and what it allows: a verdict on 21 images is not one on 2,000
        "n": int(ref.shape[0]),
        "cosine_mean": float(np.nan_to_num(cos, nan=0.0).mean()) if finite else 0.0,
        "top1_agreement_ci95": wilson_interval(int(agree.sum()), int(ref.shape[0])),
    }


SMALL_SAMPLE = 100  # fewer verification images than this: the verdict says how little it can tell


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """95% Wilson score interval of a proportion (sound at 0 and 1 and for small n, unlike the normal one)."""
    if n <= 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes >= n else min(1.0, centre + half)]


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
    extra: dict = field(default_factory=dict)  # keys beside the contract's (verify --backend ov: what ran)

    def to_json(self) -> dict:
        out = {"path": self.path, "precision": self.precision, "metrics": self.metrics, "passed": self.passed,
               **self.extra}
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
    # what the reference was: "pytorch-recorded" (PyTorch's logits recorded at export), "pytorch" (run here) or
    # "onnx-fp32" (the FP32 ONNX standing in)
    kind: str | None = None
    data_info: dict | None = None  # the images: source, n_images, held_out, domain, selection (deploykit.evidence)
    reference_check: dict | None = None  # verify --recheck-reference: PyTorch here vs its recorded logits
    reference_logits: np.ndarray | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts) and (self.reference_check or {}).get("passed", True)

    def to_json(self) -> dict:
        out: dict = {"artifacts": [a.to_json() for a in self.artifacts]}
        if self.kind is not None:
            out["reference"] = self.kind
        if self.data_info is not None:
            out["data"] = self.data_info
        if self.reference_check is not None:
            out["reference_check"] = self.reference_check
        return out

    def failure_summary(self) -> str:
        lines = [f"{a.path}: {'; '.join(a.failures)}" for a in self.artifacts if not a.passed]
        lines += (self.reference_check or {}).get("failures", [])
        if lines and self.reference_note:
            lines.append(self.reference_note)
        if lines and (self.data_info or {}).get("domain") is False:
            lines.append(f"judged on {self.n_images} bundled photos, which are not the model's kind of images: pass "
                         "--data with images like the ones it will see (an ImageFolder adds accuracy), or let INT8 "
                         "lose a stated amount with --accuracy-budget")
        return " | ".join(lines)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)


def label_indices(images, class_names: Sequence[str] | None, num_classes: int) -> np.ndarray | None:
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


def accuracy_labels(images, class_names: Sequence[str] | None, num_classes: int,
                    reporter: Reporter = SILENT) -> np.ndarray | None:
    """:func:`label_indices`, except that class folders that do not map onto the model's outputs skip the accuracy
    columns with a warning instead of refusing: parity compares logits and needs no labels."""
    try:
        return label_indices(images, class_names, num_classes)
    except InputError as exc:
        reporter.warn(f"accuracy skipped, parity only: {exc}")
        return None


def assess(path: str, precision: str, reference: np.ndarray, logits: np.ndarray, *,
           labels: np.ndarray | None = None, overrides: dict[str, Tolerance] | None = None,
           note: str | None = None) -> ArtifactReport:
    """One artifact's logits against the reference's, judged by its precision's tolerance (or ``overrides``)."""
    metrics = compare_logits(reference, logits)
    if labels is not None:
        metrics["accuracy"] = accuracy(logits, labels)
        metrics["reference_accuracy"] = accuracy(reference, labels)
        metrics["accuracy_drop"] = metrics["reference_accuracy"] - metrics["accuracy"]
        correct = int((np.asarray(logits).argmax(axis=1) == labels).sum())
        metrics["accuracy_ci95"] = [100.0 * v for v in wilson_interval(correct, len(labels))]
    tol = (overrides or {}).get(precision) or tolerance_for(precision)
    failures = judge(metrics, tol)
    return ArtifactReport(path, precision, metrics, not failures, failures, note)


def with_overrides(precision: str, **changes) -> dict[str, Tolerance]:
    changes = {k: v for k, v in changes.items() if v is not None}
    return {precision: replace(tolerance_for(precision), **changes)} if changes else {}


def batch_digest(batch: np.ndarray) -> str:
    """Which images (after preprocessing) a set of logits was computed on."""
    import hashlib

    batch = np.ascontiguousarray(batch)
    return f"{batch.shape}:{hashlib.blake2b(batch.data, digest_size=16).hexdigest()}"
