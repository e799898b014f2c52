"""Why an FP16 ONNX graph failed on ONNX Runtime CPU: the model, or the runtime? PyTorch's own FP16 answers.

ONNX Runtime's CPU provider has FP16 kernels for few ops and casts around the rest; on some graphs its FP16 result
is wrong where FP16 itself is fine. torch is imported only when there is a failure to explain and a module to ask.
"""

from __future__ import annotations

import numpy as np

from deploykit.parity import TOLERANCES, ParityReport, Precision, compare_logits, judge


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


def fp16_stand_in_caveat(module, batch: np.ndarray, ort_metrics: dict,
                         reference: np.ndarray | None = None) -> str | None:
    """The sentence that says ORT cannot stand in for TensorRT on this FP16 graph, when PyTorch in half precision
    agrees with FP32 (``reference``, else ``module`` run here) while ORT (``ort_metrics``) does not; None when
    PyTorch FP16 is just as far off (the model itself is not FP16-safe) or cannot run."""
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
