"""What `verify --backend ov` runs beside the artifacts themselves, and how its report says what ran.

``model.onnx`` is also run in bf16 where the CPU has native bf16 (OpenVINO's own default there, judged as bf16);
an INT8 artifact is also run on ONNX Runtime (its "twin"), reported under its entry's ``"ort"`` with the top-1
agreement of the two runtimes rather than judged by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from deploykit import runners
from deploykit.errors import DeployKitError
from deploykit.manifest import Manifest
from deploykit.parity import ArtifactReport, ParityReport, Precision, compare_logits
from deploykit.runners.base import Runner
from deploykit.runners.openvino import native_bf16

Run = tuple[str, str, str]  # (file name, precision it is judged as, OpenVINO inference precision)


class LastLogits(Runner):
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


def with_bf16(runs: Sequence[Run], bf16: bool | None = None) -> list[Run]:
    """``runs`` plus the FP32 ONNX in bf16 where the CPU has native bf16 (``bf16``: None asks OpenVINO, which
    raises MissingDependencyError, exit 3, where it is not installed)."""
    if bf16 is None:
        bf16 = native_bf16()
    fp32 = next((path for path, precision, _ in runs if precision == Precision.FP32.value), None)
    return [*runs, (fp32, Precision.BF16.value, "bf16")] if bf16 and fp32 else list(runs)


def ort_twin(manifest: Manifest, path: str, precision: str, threads: int | None) -> list[tuple[str, str, Runner]]:
    """The INT8 artifact ``path`` on ONNX Runtime, to run beside its OpenVINO run; none where it cannot open."""
    with contextlib.suppress(DeployKitError):
        return [(path, precision, LastLogits(runners.open(manifest.file(path), threads=threads)))]
    return []


def describe_ov_runs(report: ParityReport, candidates: Sequence[tuple[str, str, LastLogits]]) -> None:
    """Say on each OpenVINO entry what ran; move each ONNX Runtime twin's result under its entry's ``"ort"``, with
    the two runtimes' top-1 agreement with each other. ``candidates``: the runs of ``report``, in its order."""
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
