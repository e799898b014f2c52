"""ONNX Runtime's CPU graph for bias correction: built once by ORT's quantizer (:func:`quantized_cpu`), then given
each round's shifts in its int32 biases (:func:`cpu_shifted`), as the quantizer would have written them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from deploykit.precision.bias_passes import copy_model

INT32_SAFE = 2.0 ** 31 / 1.0001  # beyond this ORT's quantizer would raise the weight's scale instead (not redone here)


def quantized_cpu(fp32_path: Path, ranges, plan, shifts):
    """ONNX Runtime's CPU graph of the FP32 model with ``shifts``, in its Q/DQ form (the same quantization as the
    QOperator artifact, with every float tensor still named)."""
    import onnx

    from deploykit.precision.int8 import CpuFormat, quantize_cpu

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.onnx"
        quantize_cpu(fp32_path, path, ranges, plan=plan, fmt=CpuFormat.qdq_u8s8, bias=shifts)
        return onnx.load(str(path))


def zero_shifts(fp32, layers) -> dict[str, np.ndarray]:
    """A zero shift per layer (so that ORT's quantizer gives every one an int32 bias, zeros where it had none:
    adding 0 changes no output)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in fp32.graph.initializer}
    nodes = {n.name: n for n in fp32.graph.node}
    out = {}
    for layer in layers:
        node = nodes.get(layer.node)
        weight = None if node is None or len(node.input) < 2 else inits.get(node.input[1])
        if weight is None or len(weight.dims) < 2:
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        channels = weight.dims[1] if node.op_type == "Gemm" and not trans_b else weight.dims[0]
        if len(node.input) > 2 and node.input[2] in inits:
            channels = int(np.prod(numpy_helper.to_array(inits[node.input[2]]).shape))
        out[layer.node] = np.zeros(channels, np.float32)
    return out


def cpu_shifted(base, fp32, shifts: dict[str, np.ndarray], int8_nodes: set[str]):
    """``base`` (ORT's CPU Q/DQ graph built without shifts) with ``shifts`` added to the biases of ``int8_nodes``,
    as ORT's quantizer would have written them had the shifts been in the FP32 biases: an int32 bias becomes
    ``round((bias + shift) / scale)`` with its own scale (input scale x weight scale, which the bias does not
    change), a float one ``bias + shift``. None where the graph is not in that shape (a shared or missing bias, a
    value near int32's limit): the caller then rebuilds with ORT's quantizer."""
    from onnx import TensorProto, numpy_helper

    model = copy_model(base)
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    for node in model.graph.node:
        if node.name not in shifts or node.name not in int8_nodes:
            continue
        src = fp32_nodes.get(node.name)
        delta = np.asarray(shifts[node.name], np.float32)
        if src is None or len(node.input) < 3:
            return None
        if len(src.input) < 3 or not src.input[2]:
            old = np.zeros_like(delta)  # the zero bias the base graph was given
        elif src.input[2] in fp32_inits:
            old = numpy_helper.to_array(fp32_inits[src.input[2]]).astype(np.float32)
        else:
            return None
        if old.shape != delta.shape:
            continue  # as apply_shifts: a shift of another shape is not applied
        biased = (old + delta).astype(np.float32)
        dq = producer.get(node.input[2])
        if dq is None:  # a float bias the quantizer left as it was
            target = inits.get(node.input[2])
            if target is None or users[node.input[2]] != 1 or target.data_type != TensorProto.FLOAT:
                return None
            target.CopyFrom(numpy_helper.from_array(biased.reshape(tuple(target.dims)), target.name))
            continue
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits or \
                users[dq.input[0]] != 1 or users[node.input[2]] != 1:
            return None
        q = inits[dq.input[0]]
        if q.data_type != TensorProto.INT32:
            return None
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        value = np.round(biased.astype(np.float64) / scale)  # ORT's quantize_bias_static_impl, to the bit
        if not np.all(np.isfinite(value)) or np.any(np.abs(value) > INT32_SAFE):
            return None
        q.CopyFrom(numpy_helper.from_array(value.astype(np.int32).reshape(tuple(q.dims)), q.name))
    return model
