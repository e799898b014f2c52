"""ONNX Runtime runner (CPU by default; CUDA when asked for and present)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deploykit.errors import InputError, MissingDependencyError
from deploykit.runners.base import Opened, Runner


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("ONNX Runtime is not installed: pip install onnxruntime "
                                     "(onnxruntime-gpu on x86-64 CUDA hosts)") from None
    return onnxruntime


# ORT graph optimizers deploykit's sessions leave out. WeightBiasQuantization computes a Q/DQ conv's bias scale in
# the graph's float type: with float16 scales (the FP16 remainder) it overflows and ORT runs another graph
# (docs/precision.md, "Two ONNX Runtime CPU findings"). FP32 graphs lose nothing without it.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)

# ORT keeps every weight DequantizeLinear of a TensorRT Q/DQ graph and runs it on every inference (slow in float16);
# this folds them once and computes the graph's own semantics. Every deploykit session runs this way
# (``fold_qdq=True``), so predict, eval and bench print what verification judged (docs/bench.md, docs/precision.md).
QDQ_FOLDING = {"session.disable_quant_qdq": "1"}


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    session, input_name, output_name, input_shape, fixed_batch = Opened(), Opened(), Opened(), Opened(), Opened()

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None,
                 session_config: dict[str, str] | None = None, fold_qdq: bool = True) -> None:
        self.path, self.device, self.threads = Path(path), device, threads
        # e.g. bench's session.set_denormal_as_zero; fold_qdq=False: ORT's default fused Q/DQ path (QDQ_FOLDING)
        self.session_config = {**(QDQ_FOLDING if fold_qdq else {}), **(session_config or {})}

    def _activate(self) -> None:
        ort = _ort()
        path = self.path
        if not path.is_file():
            raise InputError(f"ONNX file not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for key, value in self.session_config.items():
            opts.add_session_config_entry(key, value)
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise MissingDependencyError("ONNX Runtime has no CUDA provider here: pip install onnxruntime-gpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers,
                                                disabled_optimizers=list(DISABLED_OPTIMIZERS))
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise InputError(f"ONNX Runtime cannot load {path.name}: {str(exc).splitlines()[0]}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs or len(inputs[0].shape) != 4 or \
                not all(isinstance(d, int) and d > 0 for d in inputs[0].shape[1:]):
            raise InputError(f"{path.name} is not an image classifier graph deploykit runs (one N x C x H x W input "
                             "with fixed C, H, W); export it with `deploykit export`")
        inp = inputs[0]
        self.input_name = inp.name
        self.output_name = outputs[0].name
        self.input_shape = tuple(int(d) for d in inp.shape[1:])
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def _release(self) -> None:
        self.session = None  # ORT frees the session (its arenas, the graph) with its last reference

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:  # ORT's own exception types: a graph that loads but cannot run these inputs
            raise InputError(f"ONNX Runtime failed running {self.path.name}: "
                             f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}"
                             ) from None
        return np.asarray(out).astype(np.float32)
