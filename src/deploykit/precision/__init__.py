"""Reduced-precision ONNX: FP16 (fp16.py), INT8 for TensorRT and for ONNX Runtime CPU (int8.py), calibration
(calibrate.py), per-layer sensitivity and the accuracy budget (sensitivity.py); variants.py runs them as the
precision stage of an export."""

from deploykit.precision.variants import (FP16_NAME, INT8_CPU_NAME, INT8_NAME, Int8Target, PrecisionRequest,
                                       PrecisionResult, add_precision_artifacts, prepare_calibration)
from deploykit.precision.calibrate import CalibMethod

__all__ = ["FP16_NAME", "INT8_CPU_NAME", "INT8_NAME", "CalibMethod", "Int8Target", "PrecisionRequest",
           "PrecisionResult", "add_precision_artifacts", "prepare_calibration"]
