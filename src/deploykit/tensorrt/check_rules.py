"""The rules :func:`deploykit.tensorrt.check.check_model` reads one ONNX graph against: the graph as the checks
see it (:class:`Graph`: producers, weights, inferred types and shapes), each node's data types against the
operator table, the published restrictions the graph shows to be broken (constant axes / K / depth inputs,
pooling, Resize modes, LayerNormalization's extra outputs, Dropout's ``is_training``), the Q/DQ rules (symmetric,
scale types and shapes, activations per tensor), and the notes on typing, DOUBLE and INT64. Each rule quotes the
text it comes from."""

from __future__ import annotations

import re
from typing import Iterable

from deploykit.onnx_shapes import infer_shapes
from deploykit.tensorrt.targets import Target

# ONNX TensorProto element type -> the names the operator tables use
_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
               9: "BOOL", 10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BF16", 17: "FP8", 18: "FP8",
               19: "FP8", 20: "FP8", 21: "UINT4", 22: "INT4", 23: "FP4"}
# ops whose data type is their output's (no data input, or a shape/index first input)
_OUTPUT_TYPED = {"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "EyeLike", "Range"}
# quoted from the TensorRT documentation, not from the operator table (source named in each)
_QDQ_SYMMETRIC = ('TensorRT uses a symmetric quantization scheme" and "`zeroPt` must only contain zero-valued '
                  'coefficients" (TensorRT "Working with Quantized Types"; IQuantizeLayer API)')
_SCALE_SHAPE = ('"The `scale` value must be a scalar for per-tensor quantization, a 1D tensor for per-channel '
                'quantization [...] All `scale` coefficients must have strictly positive values. The size of the 1D '
                '`scale` tensor must match the size of the quantization axis." (TensorRT API, IQuantizeLayer)')
_ACTIVATIONS_PER_TENSOR = ('"TensorRT supports only per-tensor quantization for activation tensors, but supports '
                           'per-channel weight quantization" (TensorRT Developer Guide, explicit quantization)')
_DOUBLE_NOTE = ("TensorRT will attempt to cast DOUBLE down to FLOAT, clamping values to `+-FLT_MAX` if necessary")



class Graph:
    """What the checks read: producers, initializers, Constant outputs, and every tensor's inferred type/shape."""

    def __init__(self, model) -> None:
        try:  # without the weights' data: a VGG-16 graph (528 MB) is not serialized into onnx's C++ pass
            inferred = infer_shapes(model)
        except Exception:  # an op shape inference cannot take: check with the types the file declares
            inferred = model
        self.model = inferred
        graph = inferred.graph
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | None]] = {}
        for info in list(graph.input) + list(graph.value_info) + list(graph.output):
            tensor = info.type.tensor_type
            if tensor.elem_type:
                self.types[info.name] = tensor.elem_type
            if tensor.HasField("shape"):
                self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        for name, init in self.inits.items():
            self.types[name] = init.data_type
            self.shapes[name] = list(init.dims)
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.types.setdefault(node.output[0], value.data_type)
                    self.shapes.setdefault(node.output[0], list(value.dims))
        self.inputs = [i.name for i in graph.input if i.name not in self.inits]
        self.outputs = [o.name for o in graph.output]

    def type_name(self, name: str) -> str | None:
        code = self.types.get(name)
        return _TYPE_NAMES.get(code, f"type {code}") if code else None

    def is_initializer(self, name: str) -> bool:
        """An initializer or a Constant node's output: what the parser imports as weights."""
        node = self.producer.get(name)
        return name in self.inits or (node is not None and node.op_type == "Constant")

    def is_build_constant(self, name: str, depth: int = 0) -> bool:
        """Computable at build time: weights, or ops over weights and static shapes only."""
        if self.is_initializer(name):
            return True
        node = self.producer.get(name)
        if node is None or depth > 32 or not node.input:  # a graph input, or a source such as RandomNormal
            return False
        if node.op_type == "Shape":
            shape = self.shapes.get(node.input[0])
            return shape is not None and all(d is not None for d in shape)
        return all(not i or self.is_build_constant(i, depth + 1) for i in node.input)

    def array(self, name: str):
        """The value of a weight (initializer or Constant), or None when it cannot be read here."""
        from onnx import numpy_helper

        tensor = self.inits.get(name)
        if tensor is None:
            node = self.producer.get(name)
            if node is not None and node.op_type == "Constant":
                tensor = next((a.t for a in node.attribute if a.name == "value"), None)
        if tensor is None or tensor.data_location == 1:  # external data is not read by the check
            return None
        try:
            return numpy_helper.to_array(tensor)
        except Exception:
            return None


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _ticks(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def check_types(g: Graph, node, spec: dict, label: str, where: str, once) -> None:
    allowed = spec["types"]
    if not allowed:
        return
    names = [node.output[0]] if node.op_type in _OUTPUT_TYPED or not node.input else [node.input[0]]
    if node.op_type in ("Cast", "CastLike") and node.output:
        names.append(node.output[0])
    for name in names:
        kind = g.type_name(name) if name else None
        if kind is None or kind in allowed:
            continue
        if kind == "UINT8" and (name in g.inputs or name in g.outputs):
            continue  # "UINT8 is only supported as network input or output tensor types"
        once((node.op_type, f"type {kind}"), f"{label}: {kind} {name!r} is not among its supported types "
             f"\"{', '.join(allowed)}\" ({where})")


def restrictions(g: Graph, node, text: str) -> Iterable[str]:
    """The published restrictions of ``node``'s op that the graph shows to be broken (short reasons)."""
    op = node.op_type
    lowered = text.lower()
    inputs = list(node.input) + [""] * 6

    def must_be_constant(index: int, what: str) -> str | None:
        name = inputs[index]
        if not name:
            return None
        strict = "initializer" in lowered or "constant tensor" in lowered
        ok = g.is_initializer(name) if strict else g.is_build_constant(name)
        wanted = "an initializer" if strict else "a build-time constant"
        return None if ok else f"`{what}` is computed in the graph ({name!r}), not {wanted}"

    if op.startswith("Reduce") and "`axes`" in text:
        yield from filter(None, [must_be_constant(1, "axes")])
    if op == "Slice" and "`axes`" in text:
        yield from filter(None, [must_be_constant(3, "axes")])
    if op in ("Squeeze", "Unsqueeze") and "`axes`" in text:
        yield from filter(None, [must_be_constant(1, "axes")])
    if op == "Pad" and "`axes`" in text:
        yield from filter(None, [must_be_constant(3, "axes")])
    if op == "CumSum" and "`axis`" in text:
        yield from filter(None, [must_be_constant(1, "axis")])
    if op == "TopK" and "`K`" in text and "initializer" in lowered:
        yield from filter(None, [must_be_constant(1, "K")])
    if op == "OneHot" and "`depth`" in text:
        yield from filter(None, [must_be_constant(1, "depth")])
    if op in ("AveragePool", "MaxPool", "LpPool"):
        kernel = _attr(node, "kernel_shape") or []
        if "2d or 3d pooling only" in lowered and len(kernel) not in (2, 3):
            yield f"a {len(kernel)}D pooling"
        dilations = _attr(node, "dilations") or []
        if "`dilations` must be empty or all ones" in text and any(d != 1 for d in dilations):
            yield f"dilations {list(dilations)}"
        if op == "MaxPool" and "`indices` output tensor unsupported" in lowered and len(node.output) > 1 \
                and node.output[1]:
            yield "its Indices output is used"
    if op == "LayerNormalization" and "only the first output" in lowered and any(node.output[1:]):
        yield "its Mean / InvStdDev outputs are used"
    if op == "Dropout" and "`is_training`" in text and inputs[2]:
        value = g.array(inputs[2])
        if value is None or bool(value.any()):
            yield "`is_training` is not an initializer evaluating to False"
    if op == "Resize":
        yield from _resize(node, text)


def _resize(node, text: str) -> Iterable[str]:
    parts = {key: _ticks(chunk) for key, chunk in
             re.findall(r"Supported (resize transformation modes|resize modes|nearest modes|aspect ratio policy):"
                        r"([^.]*)\.", text)}
    checks = (("resize transformation modes", "coordinate_transformation_mode", "half_pixel"),
              ("resize modes", "mode", "nearest"), ("nearest modes", "nearest_mode", "round_prefer_floor"),
              ("aspect ratio policy", "keep_aspect_ratio_policy", "stretch"))
    mode = _text(_attr(node, "mode", b"nearest"))
    for key, attr, default in checks:
        allowed = parts.get(key)
        if not allowed or (key == "nearest modes" and mode != "nearest"):
            continue
        value = _text(_attr(node, attr, default))
        if value not in allowed:
            yield f"{attr} {value!r}"
    if "antialiasing is not supported" in text.lower() and _attr(node, "antialias", 0):
        yield "antialias=1"


def qdq(g: Graph, node, ops: dict, where: str) -> Iterable[str]:
    """Q/DQ rules: symmetric (zero point 0), scale and quantized types the version takes, scale shape / axis."""
    quantize = node.op_type == "QuantizeLinear"
    inputs = list(node.input) + ["", ""]
    x, scale, zero = inputs[0], inputs[1], inputs[2]
    q_types = ops.get("QuantizeLinear", {}).get("types", [])
    dq_types = ops.get("DequantizeLinear", {}).get("types", [])
    scale_type = g.type_name(scale)
    if scale_type and q_types and scale_type not in q_types:
        yield (f"scale {scale!r} is {scale_type}; QuantizeLinear / DequantizeLinear scales of this version are "
               f"\"{', '.join(q_types)}\" (QuantizeLinear types, {where})")
    quantized = g.type_name(node.output[0] if quantize else x) or (g.type_name(zero) if zero else None)
    if quantized and dq_types and quantized not in dq_types:
        yield (f"quantized type {quantized}: DequantizeLinear supports \"{', '.join(dq_types)}\" ({where})"
               + (" (UINT8 only as network input or output)" if quantized == "UINT8" else ""))
    if zero:
        value = g.array(zero)
        if value is None:
            yield f"zero point {zero!r} is not a constant that can be checked to be 0 -- {_QDQ_SYMMETRIC}"
        elif value.any():
            rule = ops.get(node.op_type, {}).get("restriction", "zero point must be zero")
            yield f"zero point {zero!r} is not 0 (asymmetric) -- \"{rule}\" ({where})"
    if scale and not g.is_build_constant(scale):
        yield f"scale {scale!r} is computed in the graph, not a build-time constant"
    values = g.array(scale) if scale else None
    if values is not None and (values <= 0).any():
        yield f"scale {scale!r} has a coefficient <= 0 -- {_SCALE_SHAPE}"
    shape = g.shapes.get(scale)
    if shape is None:
        return
    if len(shape) > 1 and _attr(node, "block_size", 0) in (0, None):
        yield f"scale {scale!r} has shape {shape}, neither a scalar nor 1-D -- {_SCALE_SHAPE}"
    elif len(shape) == 1 and shape[0] not in (1, None):
        x_shape = g.shapes.get(x)
        axis = _attr(node, "axis", 1)
        if x_shape:
            axis = axis + len(x_shape) if axis < 0 else axis
            if not 0 <= axis < len(x_shape) or x_shape[axis] not in (shape[0], None):
                yield f"per-channel scale of {shape[0]} along axis {axis} of a {x_shape} tensor -- {_SCALE_SHAPE}"
        if quantize and not g.is_build_constant(x):
            yield f"activation {x!r} is quantized per channel -- {_ACTIVATIONS_PER_TENSOR}"


def type_notes(g: Graph, target: Target, note) -> None:
    doubles = [n for n, t in g.types.items() if t == 11]
    if doubles:
        note(f"{len(doubles)} DOUBLE tensor(s): \"{_DOUBLE_NOTE}\"")
    int64 = sorted(n for n, t in g.types.items() if t == 7 and (n in g.inputs or n in g.outputs))
    if int64:
        note(f"INT64 network I/O {int64}: TensorRT >= 9.0 keeps INT64 (\"The ONNX parser no longer automatically "
             "casts INT64 to INT32\"; such I/O needs INT64 bindings)")
    io_types = {g.type_name(n) for n in g.inputs + g.outputs} - {None}
    reduced = {g.type_name(n) for n in g.types if g.types[n] in (3, 10, 16, 17, 22, 23)} - {None}
    quantized = any(n.op_type == "QuantizeLinear" for n in g.model.graph.node)
    if target.typing == "weak":
        what = []
        if quantized:
            what.append("INT8 needs the INT8 builder flag (plus FP16 for an FP16 remainder); deploykit's build sets "
                        "them")
        elif reduced & {"FP16", "BF16"}:
            what.append("the FP16 tensors run in FP16 only with the FP16 builder flag; deploykit's build sets it")
        if io_types & {"FP16", "BF16"}:
            what.append(f"the network I/O stays {'/'.join(sorted(io_types & {'FP16', 'BF16'}))} (bindings of that "
                        "type)")
        note(f"TensorRT {target.version} builds weakly typed (builder precision flags)"
             + (": " + "; ".join(what) if what else ""))
    else:
        only = " (the only mode: weak typing was removed in 11.0)" if target.typing == "strong-only" else ""
        note(f"TensorRT {target.version} builds strongly typed{only}: each layer runs in the type the graph gives it"
             + (f" ({', '.join(sorted(reduced))} inside, I/O {', '.join(sorted(io_types))})" if reduced else
                " (FP32 throughout)"))
