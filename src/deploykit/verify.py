"""Compare artifacts with their reference and judge them against one tolerance table per precision.

Validation collects every failing metric of every artifact and reports them together (as Optimum's
``validate_model_outputs`` does), rather than stopping at the first.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from deploykit.data import ImageSet, verification_set
from deploykit.errors import DeployKitError, InputError
from deploykit.manifest import Manifest
from deploykit.reporter import Callbacks
from deploykit.runners.base import Runner


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
        # the sample size and what it allows: a verdict on 21 images is not one on 2,000
        "n": int(ref.shape[0]),
        "cosine_mean": float(np.nan_to_num(cos, nan=0.0).mean()) if finite else 0.0,
        "top1_agreement_ci95": wilson_interval(int((top_ref[:, 0] == top_cand[:, 0]).sum()), int(ref.shape[0])),
    }


SMALL_SAMPLE = 100  # fewer verification images than this: the verdict says how little it can tell


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """95% Wilson score interval of a proportion (sound at 0 and 1 and for small n, unlike the normal one)."""
    if n <= 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


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


def accuracy_labels(images: ImageSet, class_names: Sequence[str] | None, num_classes: int,
                    warn: Callable[[str], None] | None = None) -> np.ndarray | None:
    """:func:`label_indices`, except that class folders that do not map onto the model's outputs skip the accuracy
    columns with a warning instead of refusing: parity compares logits and needs no labels."""
    try:
        return label_indices(images, class_names, num_classes)
    except InputError as exc:
        if warn is not None:
            warn(f"accuracy skipped, parity only: {exc}")
        return None


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
            correct = int((logits.argmax(axis=1) == labels).sum())
            metrics["accuracy_ci95"] = [100.0 * v for v in wilson_interval(correct, len(labels))]
        tol = (overrides or {}).get(precision) or tolerance_for(precision)
        failures = judge(metrics, tol)
        reports.append(ArtifactReport(path, precision, metrics, not failures, failures, note))
    return ParityReport(reports, reference_name, data_name, int(batch.shape[0]), note)


def verify_folder(folder: Path, *, data: Path | None = None, warn: Callable[[str], None] | None = None,
                  overrides: dict[str, Tolerance] | None = None, max_images: int = 256,
                  only: Sequence[str] | None = None, loaded=None, allow_pickle: bool = False,
                  model_def: str | None = None, backend: Runtime | str | None = None,
                  threads: int | None = None) -> ParityReport:
    """Verify every ONNX artifact and TensorRT engine of an export folder against the PyTorch reference (or the
    FP32 ONNX). Engines are skipped with a warning where TensorRT or a GPU is missing, unless named in ``only``.
    ``loaded``: the in-memory PyTorch model, when the caller has it (export), instead of reloading the source.

    ``backend``: run every artifact on that runtime instead of the one it is for (ONNX on ``ort``, engines on
    ``trt``). ``ov``: the ONNX artifacts on OpenVINO (f32, and ``model.onnx`` also in bf16 where the CPU has native
    bf16, judged as ``bf16``); each entry says what ran (``backend``, ``inference_precision``,
    ``layer_precisions``), and an INT8 artifact is also run on ONNX Runtime, reported under ``"ort"`` with the
    top-1 agreement of the two runtimes."""
    from deploykit.errors import MissingDependencyError

    folder = Path(folder)
    backend = None if backend is None else Runtime(backend)
    manifest = Manifest.load(folder)
    pre = manifest.preprocessing
    images = verification_set(data, reporter=Callbacks(on_warn=warn), max_images=max_images)
    batch = images.load(pre)
    reference, ref_name = reference_runner(folder, manifest, warn=warn, loaded=loaded, allow_pickle=allow_pickle,
                                           model_def=model_def)
    entries = [a for a in manifest.artifacts if _verifiable(a["path"]) and (only is None or a["path"] in only)]
    if not entries:
        raise InputError(f"{folder} has no ONNX artifacts or engines; run `deploykit export` again")
    if backend is not None:
        entries = _for_backend(entries, backend, folder, only)
    if ref_name in {a["path"] for a in entries} and backend is not Runtime.ov:
        # the FP32 ONNX stands in as reference: not judged by itself (on OpenVINO it is another run: judged)
        entries = [a for a in entries if a["path"] != ref_name]
        if not entries:
            raise InputError(f"no PyTorch reference ({getattr(reference, 'reason', 'see above')}) and {ref_name} is "
                             "the only artifact: nothing to compare")
    runs = [(a["path"], a["precision"], "f32") for a in entries]
    if backend is Runtime.ov:
        from deploykit.runners.openvino import native_bf16

        bf16 = native_bf16()  # without OpenVINO: MissingDependencyError (exit 3) here
        fp32 = next((p for p, prec, _ in runs if prec == Precision.FP32.value), None)
        if bf16 and fp32:  # OpenVINO's own default on such CPUs: verified as what it is, bf16
            runs.append((fp32, Precision.BF16.value, "bf16"))
    candidates = []
    for path, precision, hint in runs:
        try:
            runner = runner_for(manifest.file(path), warn=warn, backend=backend, inference_precision=hint,
                                threads=threads)
        except (MissingDependencyError, InputError) as exc:
            if only is not None or isinstance(exc, InputError) and backend is not Runtime.ov:
                raise
            if warn:
                warn(f"skipping {path}{'' if hint == 'f32' else f' in {hint}'}: {exc}")
            continue
        runner = _Recorded(runner)
        candidates.append((path, precision, runner))
        if backend is Runtime.ov and precision == Precision.INT8.value:
            with contextlib.suppress(DeployKitError):  # the ONNX Runtime twin: reported beside, not judged
                candidates.append((path, precision, _Recorded(runner_for(manifest.file(path), threads=threads))))
    if not candidates:
        raise InputError(f"nothing in {folder} can be verified on this machine")
    labels = accuracy_labels(images, manifest.class_names, int(manifest.model["num_classes"]), warn)
    report = evaluate(reference, candidates, batch, labels=labels, overrides=overrides, reference_name=ref_name,
                      data_name=images.source)
    if backend is Runtime.ov:
        _describe_ov_runs(report, candidates)
    explain_fp16_failures(report, getattr(reference, "module", None), batch)
    return report


class Runtime(str, Enum):
    """Where an artifact runs: ONNX Runtime, OpenVINO (CPU) or TensorRT (engines)."""

    ort = "ort"
    ov = "ov"
    trt = "trt"


class _Recorded(Runner):
    """A runner that keeps its last logits (to compare two runtimes on the same images afterwards)."""

    def __init__(self, inner: Runner) -> None:
        self.inner, self.name, self.input_shape = inner, inner.name, inner.input_shape
        self.logits: np.ndarray | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.logits = self.inner.infer(batch)
        return self.logits

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - infer is overridden
        return self.inner.infer(batch)


def _for_backend(entries: list[dict], backend: Runtime, folder: Path, only: Sequence[str] | None) -> list[dict]:
    """The artifacts ``backend`` runs: ONNX files on ort/ov, engines on trt; naming another kind is an error."""
    from deploykit.engine import is_engine

    wanted = [a for a in entries if is_engine(a["path"]) == (backend is Runtime.trt)]
    if only is not None and len(wanted) < len(entries):
        other = next(a["path"] for a in entries if a not in wanted)
        raise InputError(f"{other} cannot run on --backend {backend.value}: " +
                         ("TensorRT runs engines; build one with `deploykit build " + str(folder) + "`"
                          if backend is Runtime.trt else "an engine runs on TensorRT (--backend trt)"))
    if not wanted:
        raise InputError(f"{folder} has no TensorRT engine: `deploykit build {folder}` on the device" if backend is
                         Runtime.trt else f"{folder} has no ONNX artifact: run `deploykit export` again")
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
            from deploykit.precision.build import fp16_stand_in_caveat

            caveat = fp16_stand_in_caveat(module, batch, art.metrics)
            if caveat:
                art.note = f"{art.note}; {caveat}" if art.note else caveat
                art.failures.append(caveat)


def _verifiable(path: str) -> bool:
    from deploykit.engine import is_engine

    return path.endswith(".onnx") or is_engine(path)


def runner_for(path: Path, *, device: str = "cpu", warn=None, backend: Runtime | str | None = None,
               inference_precision: str = "f32", threads: int | None = None) -> Runner:
    """The runner for an artifact file: by default ONNX Runtime for ``.onnx``, TensorRT for engines (lazy imports);
    ``backend="ov"``: OpenVINO on the CPU for ``.onnx`` in ``inference_precision`` (f32 or bf16)."""
    from deploykit.engine import is_engine

    path = Path(path)
    backend = None if backend is None else Runtime(backend)
    engine = is_engine(path)
    if backend is not None and engine != (backend is Runtime.trt):
        raise InputError(f"{path.name} cannot run on --backend {backend.value}: " +
                         ("TensorRT runs engines: `deploykit build " + str(path.parent) + "`, then pass the engine"
                          if backend is Runtime.trt else "an engine runs on TensorRT (--backend trt)"))
    if engine:
        from deploykit.runners.trt import TensorRTRunner

        return TensorRTRunner(path, warn=warn)
    if backend is Runtime.ov:
        if device != "cpu":
            raise InputError("deploykit runs OpenVINO on the CPU: use --device cpu")
        from deploykit.runners.openvino import OpenVINORunner

        return OpenVINORunner(path, inference_precision=inference_precision, threads=threads)
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, device=device, threads=threads)


def on_backend(runner: Runner, backend: Runtime | str, note=None) -> Runner:
    """The same artifact as ``runner`` on ``backend`` (predict --backend); ``note`` hears what ran."""
    path = getattr(runner, "path", None)
    if path is None:
        raise InputError("--backend applies to exported artifacts (ONNX, engines); a checkpoint runs on PyTorch")
    runner = runner_for(path, backend=backend)
    if note and runner.name == "openvino":
        note(f"{path.name} on OpenVINO {runner.version}, computed in {runner.precision_text}")
    return runner


def record_parity(manifest: Manifest, report: ParityReport) -> None:
    """Store each artifact's parity result in its manifest entry (as the export does)."""
    for art in report.artifacts:
        entry = manifest.artifact(art.path)
        if entry is not None:
            entry["parity"] = {"reference": report.reference, "data": report.data, "n_images": report.n_images,
                               "metrics": art.metrics, "passed": art.passed, "failures": art.failures,
                               **({"note": art.note} if art.note else {})}


MAX_SOURCE_HASH_BYTES = 8 << 30  # hashing runs at ~1 GB/s; a checkpoint beyond this is not a classifier we reload


def reference_runner(folder: Path, manifest: Manifest, warn=None, loaded=None, *, allow_pickle: bool = False,
                     model_def: str | None = None) -> tuple[Runner, str]:
    """The PyTorch model the folder was exported from; the FP32 ONNX when torch or the source is missing.

    A manifest is data: the ``allow_pickle`` / ``model_def`` it recorded are never honoured by themselves. When the
    source needs them, the user repeats the flag on this command line, or the FP32 ONNX stands in (and we say why).
    """
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    if loaded is not None:
        from deploykit.runners.torch import TorchRunner

        return TorchRunner(loaded.module, manifest.preprocessing.shape), "pytorch"
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
    if reason is None and needs == "--allow-pickle" and not allow_pickle:
        reason = ("the source was exported with --allow-pickle, which runs code from the file; a manifest cannot "
                  "ask for that -- pass --allow-pickle again if you trust it")
    if reason is None and (source.is_symlink() or not source.is_file()):
        reason = f"the source checkpoint {source} is not here"
    if reason is None and source.stat().st_size > MAX_SOURCE_HASH_BYTES:
        reason = f"the source checkpoint {source} is too large to check against the manifest"
    if reason is None:
        from deploykit.files import sha256_file

        if sha256_file(source) != manifest.source.get("sha256"):
            reason = f"{source} changed since export (sha256 differs)"
    if reason is None:
        from deploykit.models.loading import LoadOptions, load_model
        from deploykit.runners.torch import TorchRunner

        options = LoadOptions.from_dict(stored)
        options.allow_pickle = allow_pickle
        options.model_def = model_def
        loaded = load_model(source, options)
        return TorchRunner(loaded.module, manifest.preprocessing.shape), "pytorch"
    fp32 = manifest.find(precision="fp32", kind="onnx")
    if fp32 is None:
        raise InputError(f"no PyTorch reference ({reason}) and no FP32 ONNX in {folder} to compare against")
    if warn:
        warn(f"{reason}: comparing against {fp32['path']} instead of PyTorch")
    runner = OnnxRuntimeRunner(manifest.file(fp32))
    runner.reason = reason
    return runner, fp32["path"]


def with_overrides(precision: str, **changes) -> dict[str, Tolerance]:
    changes = {k: v for k, v in changes.items() if v is not None}
    return {precision: replace(tolerance_for(precision), **changes)} if changes else {}
