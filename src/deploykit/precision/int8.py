"""FP32 ONNX -> INT8 ONNX, two ways.

``model.int8.onnx`` (TensorRT). Explicit quantization in the layout TensorRT's Q/DQ fusions expect
(TensorRT developer guide, "Q/DQ layer-placement recommendations"):

* a QuantizeLinear -> DequantizeLinear pair on the activation input of every Conv / ConvTranspose / Gemm /
  MatMul (shared by all quantized consumers of the tensor, so a tensor is quantized once);
* weights stored as int8 initializers with per-output-channel scales and a DequantizeLinear (no Q node);
* on each residual ``Add`` whose other input comes straight from a quantized Conv, a Q/DQ pair on the
  *residual* input only, so TensorRT fuses the Add (and the ReLU after it) into that Conv's epilogue;
* symmetric int8 everywhere: zero points are 0, scales ``amax / 127``; biases stay FP32 (TensorRT folds them
  into the kernel and cannot take int32 DequantizeLinear bias);
* everything else (pooling, reshape, softmax, the dequantized activations) stays FP32. With Q/DQ on every
  conv input and the residual, TensorRT runs the convolutions, their bias/residual/ReLU epilogues and
  max-pooling in INT8; the rest is a few percent of the FLOPs. FP32 there keeps the graph runnable and
  checkable in ONNX Runtime on any CPU; set ``--fp16`` for the FP16 graph of the unquantized model.

``model.int8-cpu.onnx`` (ONNX Runtime CPU). Built with onnxruntime.quantization from the same calibrated
ranges, in the format ONNX Runtime's CPU kernels run fastest (see :data:`CPU_FORMAT`; measured in
``benchmarks/export_time_resnet50.py``, table in docs/precision.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from deploykit.files import atomic_path
from deploykit.precision.graph import (apply_shifts, float_tensors, infer_shapes, name_nodes, qdq_counts, save_model,
                                       toposort)

MATMUL_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QMAX = 127.0
MIN_AMAX = 1e-8


@dataclass(frozen=True)
class QuantLayer:
    """One Conv/Gemm/MatMul the TensorRT plan puts in INT8."""

    node: str  # ONNX node name
    name: str  # friendly name: the weight's module path when there is one (layer1.0.conv1)
    op_type: str
    activations: tuple[str, ...]  # activation inputs to quantize
    weight: str | None  # initializer quantized per channel
    weight_axis: int | None


@dataclass
class TrtPlan:
    layers: list[QuantLayer]
    residuals: dict[str, str]  # Add node name -> the input tensor that gets Q/DQ

    @property
    def activation_tensors(self) -> list[str]:
        names = [t for layer in self.layers for t in layer.activations] + list(self.residuals.values())
        return list(dict.fromkeys(names))

    def layer(self, name: str) -> QuantLayer | None:
        return next((layer for layer in self.layers if layer.name == name or layer.node == name), None)


@dataclass
class Int8Graph:
    path: Path | None  # None: built in memory, not saved
    layers: list[str]  # friendly names of the layers in INT8
    excluded: list[str]  # friendly names kept in FP32
    counts: dict[str, int] = field(default_factory=dict)


def _layer_name(node, weight: str | None) -> str:
    if weight:
        return weight[:-len(".weight")] if weight.endswith(".weight") else weight
    return node.name


def plan_trt(model) -> TrtPlan:
    """Where the Q/DQ pairs go (see the module docstring). ``model`` is an onnx.ModelProto (names fixed)."""
    name_nodes(model)
    inits = {i.name: i for i in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    layers = []
    for node in model.graph.node:
        if node.op_type not in MATMUL_OPS:
            continue
        attrs = {a.name: a for a in node.attribute}
        weight = node.input[1] if len(node.input) > 1 and node.input[1] in inits else None
        acts = [node.input[0]] if node.input[0] not in inits else []
        if node.op_type == "MatMul" and weight is None and len(node.input) > 1:
            acts.append(node.input[1])  # activation x activation (attention): both inputs
        axis = None
        if weight is not None:
            dims = len(inits[weight].dims)
            if node.op_type in ("Conv",):
                axis = 0
            elif node.op_type == "ConvTranspose":
                axis = 1 if int(attrs["group"].i if "group" in attrs else 1) == 1 else None
            elif node.op_type == "Gemm":
                axis = 0 if "transB" in attrs and attrs["transB"].i else 1
            elif node.op_type == "MatMul":
                axis = dims - 1 if dims >= 2 else None
            if axis is None:
                weight = None  # a layout we do not quantize per channel: leave the weight in FP32
        if not acts and weight is None:
            continue
        layers.append(QuantLayer(node.name, _layer_name(node, weight), node.op_type, tuple(acts), weight, axis))

    conv_like = {layer.node for layer in layers if layer.op_type in ("Conv", "ConvTranspose")}
    depth = _depths(model)
    residuals = {}
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(n in inits for n in node.input):
            continue
        fusable = []
        for name in node.input:
            src = producer.get(name)
            if src is not None and src.name in conv_like and len(consumers[name]) == 1 and \
                    name not in graph_outputs:
                fusable.append(name)
        if not fusable:
            continue
        fused = max(fusable, key=lambda n: depth.get(n, 0))  # the main branch fuses, the shortcut gets Q/DQ
        other = node.input[1] if fused == node.input[0] else node.input[0]
        residuals[node.name] = other
    return TrtPlan(layers, residuals)


def _depths(model) -> dict[str, int]:
    """Longest path (in nodes) from a graph input to every tensor; the graph is in topological order."""
    depth: dict[str, int] = {i.name: 0 for i in model.graph.input}
    for node in model.graph.node:
        d = 1 + max((depth.get(n, 0) for n in node.input if n), default=0)
        for out in node.output:
            depth[out] = d
    return depth


def quantize_trt(src: Path, dest: Path, amax: dict[str, float], *, exclude: Iterable[str] = (),
                 plan: TrtPlan | None = None, bias: dict[str, np.ndarray] | None = None) -> Int8Graph:
    """Write the TensorRT-style Q/DQ graph of ``src`` to ``dest`` (atomically, checked): :func:`qdq_trt` on the
    loaded FP32 model."""
    import onnx

    model = onnx.load(str(src))
    graph = qdq_trt(model, amax, exclude=exclude, plan=plan, bias=bias)
    save_model(model, dest)
    graph.path = Path(dest)
    return graph


def qdq_trt(model, amax: dict[str, float], *, exclude: Iterable[str] = (), plan: TrtPlan | None = None,
            bias: dict[str, np.ndarray] | None = None) -> Int8Graph:
    """Turn the FP32 ``model`` (an onnx.ModelProto, edited in place) into the TensorRT-style Q/DQ graph.

    ``amax`` maps each activation tensor of the plan to its calibrated ``|x|`` range; ``exclude`` names layers
    (friendly or node names) to keep in FP32; ``bias`` maps node names to the bias shifts of
    :mod:`deploykit.precision.bias_correction`, added to the layers that go to INT8. The result's ``path`` is
    None until the model is saved.
    """
    from onnx import helper, numpy_helper

    plan = plan or plan_trt(model)
    name_nodes(model)
    exclude = set(exclude)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    active = [layer for layer in plan.layers if layer.name not in exclude and layer.node not in exclude]
    active_nodes = {layer.node for layer in active}
    if bias:
        apply_shifts(model, bias, active_nodes)
        inits = {i.name: i for i in graph.initializer}
    new_nodes, new_inits = [], []
    dq_of: dict[str, str] = {}

    def zero_point(name: str, shape=()) -> str:
        zp = f"{name}_zero_point"
        new_inits.append(numpy_helper.from_array(np.zeros(shape, np.int8), zp))
        return zp

    def activation_dq(tensor: str) -> str:
        if tensor in dq_of:
            return dq_of[tensor]
        if tensor not in amax:
            raise KeyError(f"no calibrated range for tensor {tensor!r}")
        scale_name = f"{tensor}_scale"
        new_inits.append(numpy_helper.from_array(np.array(max(amax[tensor], MIN_AMAX) / QMAX, np.float32),
                                                 scale_name))
        zp = zero_point(tensor)
        q, dq = f"{tensor}_QuantizeLinear", f"{tensor}_DequantizeLinear"
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, scale_name, zp], [f"{q}_Output"], name=q))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{q}_Output", scale_name, zp], [f"{dq}_Output"],
                                          name=dq))
        dq_of[tensor] = f"{dq}_Output"
        return dq_of[tensor]

    weight_users: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            weight_users[name] += 1
    replaced_weights = []
    for layer in active:
        node = nodes[layer.node]
        for i, name in enumerate(node.input):
            if name in layer.activations:
                node.input[i] = activation_dq(name)
        if layer.weight is not None:
            w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
            axis = layer.weight_axis
            reduce = tuple(d for d in range(w.ndim) if d != axis)
            ch_amax = np.maximum(np.abs(w).max(axis=reduce), MIN_AMAX)
            scale = (ch_amax / QMAX).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            wq = np.clip(np.round(w / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
            base = f"{layer.weight}_{layer.node}" if weight_users[layer.weight] > 1 else layer.weight
            new_inits += [numpy_helper.from_array(wq, f"{base}_quantized"),
                          numpy_helper.from_array(scale, f"{base}_scale")]
            zp = zero_point(base, scale.shape)
            dq = f"{base}_DequantizeLinear"
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", zp],
                                              [f"{dq}_Output"], name=dq, axis=axis))
            node.input[1] = f"{dq}_Output"
            replaced_weights.append(layer.weight)
    producer = {out: n for n in graph.node for out in n.output}
    for add_name, tensor in plan.residuals.items():
        add = nodes[add_name]
        fused = add.input[1] if add.input[0] == tensor else add.input[0]
        src_node = producer.get(fused)
        if src_node is None or src_node.name not in active_nodes:
            continue  # the conv it would fuse into stays FP32: no point in quantizing the shortcut
        for i, name in enumerate(add.input):
            if name == tensor:
                add.input[i] = activation_dq(tensor)
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    still_used = {name for node in graph.node for name in node.input}
    for name in set(replaced_weights):
        if name not in still_used:
            graph.initializer.remove(inits[name])
    toposort(model)
    return Int8Graph(None, [layer.name for layer in active],
                     [layer.name for layer in plan.layers if layer.node not in active_nodes], qdq_counts(model))


# -- ONNX Runtime CPU ----------------------------------------------------------------------------------------
class CpuFormat(str, Enum):
    """Quantized layouts ONNX Runtime's CPU provider runs (activation/weight types)."""

    qoperator_u8s8 = "qoperator-u8s8"  # QLinearConv / QLinearMatMul operators
    qdq_u8s8 = "qdq-u8s8"  # Q/DQ around every quantized op; ORT fuses them into the same kernels at load
    qdq_s8s8 = "qdq-s8s8"


CPU_FORMAT = CpuFormat.qoperator_u8s8  # fastest on ORT CPU here; see docs/precision.md for the figures


def cpu_tensors(model) -> list[str]:
    """Every float activation ONNX Runtime's quantizer may ask a range for."""
    return sorted(float_tensors(model))


def _fed_only_by_float_layers(model, int8_layers: set[str], float_layers: set[str]) -> list[str]:
    """Nodes other than the plan's layers whose inputs come from layers kept out of INT8 and from no INT8 layer
    (through other such nodes). ORT's quantizer would still quantize them (a residual Add becomes QLinearAdd,
    with a Quantize on each FP32 input): rounding that feeds float layers only. Kept float, a layer moved out of
    INT8 takes all its noise with it (Lite0 with every layer excluded: logit MSE 0.0014 from 9 QLinearAdds, 0
    without). With no layer excluded nothing changes."""
    int8_fed, float_fed, glue = set(), set(), []
    for node in model.graph.node:  # ONNX nodes are in topological order
        if node.name in int8_layers:
            int8_fed.update(node.output)
        elif node.name in float_layers:
            float_fed.update(node.output)
        elif any(i in int8_fed for i in node.input):
            int8_fed.update(node.output)
        elif any(i in float_fed for i in node.input):
            float_fed.update(node.output)
            glue.append(node.name)
    return glue


def quantize_cpu(src: Path, dest: Path, ranges: dict[str, dict[str, float]], *, exclude: Iterable[str] = (),
                 fmt: CpuFormat = CPU_FORMAT, plan: TrtPlan | None = None,
                 bias: dict[str, np.ndarray] | None = None) -> Int8Graph:
    """ONNX Runtime's own quantizer, fed our calibrated ranges (lo/hi clipped to the method's amax); ``bias`` as
    for :func:`quantize_trt`."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    model = onnx.load(str(src))
    name_nodes(model)
    plan = plan or plan_trt(model)
    exclude = set(exclude)
    skip = [layer.node for layer in plan.layers if layer.name in exclude or layer.node in exclude]
    int8_nodes = {layer.node for layer in plan.layers} - set(skip)
    if bias:
        apply_shifts(model, bias, int8_nodes)
    glue = _fed_only_by_float_layers(model, int8_nodes, set(skip))
    act = QuantType.QUInt8 if fmt in (CpuFormat.qoperator_u8s8, CpuFormat.qdq_u8s8) else QuantType.QInt8
    data = {}
    for name, r in ranges.items():
        amax = float(r.get("amax_u8", r["amax"])) if act is QuantType.QUInt8 else float(r["amax"])
        lo, hi = max(float(r["min"]), -amax), min(float(r["max"]), amax)
        data[name] = (np.array(min(lo, 0.0), np.float32), np.array(max(hi, 0.0), np.float32))
    tensors = TensorsData(CalibrationMethod.MinMax, data)
    options = {"ActivationSymmetric": act is QuantType.QInt8, "WeightSymmetric": True}
    inferred = infer_shapes(model)
    if fmt is CpuFormat.qoperator_u8s8:
        quantizer = ONNXQuantizer(inferred, True, False, QuantizationMode.QLinearOps, True, QuantType.QInt8, act,
                                  tensors, None, skip + glue, list(QLinearOpsRegistry), options)
    else:
        quantizer = QDQQuantizer(inferred, True, False, QuantType.QInt8, act, tensors, None, skip + glue,
                                 list(QDQRegistry), options)
    quantizer.quantize_model()
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        quantizer.model.save_model_to_file(str(tmp), False)
    out = onnx.load(str(dest))
    counts = defaultdict(int)
    for node in out.graph.node:
        counts[node.op_type] += 1
    quantized = [layer.name for layer in plan.layers if layer.node not in skip]
    return Int8Graph(dest, quantized, [layer.name for layer in plan.layers if layer.node in skip], dict(counts))
