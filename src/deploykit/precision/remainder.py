"""The non-INT8 part ("remainder") of ``model.int8.onnx`` in FP16: the graph TensorRT builds with INT8 + FP16.

:func:`~deploykit.precision.int8.quantize_trt` writes the Q/DQ graph with everything outside the INT8 layers in
FP32. A TensorRT engine built from that runs the remainder (pooling, the layers the accuracy budget kept out of
INT8, the epilogues TensorRT cannot fuse) in FP32, so it can be slower than the FP16 engine; NVIDIA ModelOpt's
INT8 default writes the remainder in FP16 and users build it with ``trtexec --int8 --fp16``. This module rewrites
the Q/DQ graph so that the FP16 remainder is *in the file*: what ONNX Runtime verifies on the CPU is what
TensorRT builds.

* The opset goes to 19 (:data:`QDQ_OPSET`), where QuantizeLinear/DequantizeLinear take float16 scales
  (``onnx.version_converter``; TensorRT 10.3 parses up to opset 20).
* Every float tensor and initializer outside the graph's input and output becomes float16, the Q/DQ scales
  included, so a DequantizeLinear outputs float16 straight into its Conv/Gemm: no Cast between a DQ and its
  consumer (a Cast there stops TensorRT fusing the Q/DQ pair into an INT8 kernel). Zero points stay int8.
* Input and output stay FP32 (a Cast at each end), and the nodes the FP16 stage keeps in FP32 stay FP32
  (:func:`deploykit.precision.fp16.fp32_nodes`: unsafe ops, large reductions, outputs seen beyond 16384). A kept
  node fed by a DQ gets its own FP32 DQ (same int8 input, the same scale value stored as float32), so the rule
  above holds there too.
* Each scale is rounded *up* to a float16 value before the conversion (an activation's Q and DQ share it, so
  the pair stays consistent; a larger scale never clips). A weight whose channel scale moved by more than half a
  level (float16 subnormals: channel ``|w|`` max below ~0.008) is re-quantized to the rounded scale, so it
  dequantizes to what it did in FP32.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear-19: float16 scales
FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)
FP16_MAX = float(np.finfo(np.float16).max)
QMAX = 127


class Remainder(str, Enum):
    """The precision of what ``model.int8.onnx`` does not run in INT8."""

    fp16 = "fp16"
    fp32 = "fp32"

    @property
    def dtype(self) -> str:
        return {"fp16": "float16", "fp32": "float32"}[self.value]


@dataclass
class RemainderGraph:
    path: Path | None  # None: built in memory, not saved
    kept_fp32: dict[str, str] = field(default_factory=dict)  # node name -> why (FP16 keep rules)
    opset: int = QDQ_OPSET
    requantized: int = 0  # weight channels re-quantized to their float16 scale


def fp16_remainder(src: Path, dest: Path, absmax: dict[str, float]) -> RemainderGraph:
    """Rewrite the FP32-remainder Q/DQ graph ``src`` with an FP16 remainder into ``dest`` (may be ``src``;
    atomically, checked): :func:`remainder_fp16` on the loaded graph."""
    import onnx

    from deploykit.precision.graph import save_model

    fp16, rewritten = remainder_fp16(onnx.load(str(src)), absmax)
    save_model(fp16, dest)
    rewritten.path = Path(dest)
    return rewritten


def remainder_fp16(model, absmax: dict[str, float]) -> tuple[object, RemainderGraph]:
    """The FP32-remainder Q/DQ ``model`` (an onnx.ModelProto, edited) with an FP16 remainder, and what was kept.

    ``absmax`` is the largest ``|x|`` seen per tensor of the FP32 graph (the FP16 stage's activation rule).
    The result's ``path`` is None until the model is saved.
    """
    from deploykit.precision.fp16 import fp32_nodes, to_fp16
    from deploykit.precision.graph import name_nodes

    name_nodes(model)
    model = to_opset(model, QDQ_OPSET)
    requantized = _round_scales(model)
    keep = fp32_nodes(model, absmax)
    keep.update(_wide_qdq(model, keep))
    keep.update(_private_dequantize(model, keep))
    fp16 = to_fp16(model, keep)
    bad = casts_after_dequantize(fp16)
    if bad:  # the rewrite guarantees none: a bug, not a user error
        raise RuntimeError(f"FP16 remainder put a Cast between a DequantizeLinear and its consumer: {bad[:3]}")
    return fp16, RemainderGraph(None, keep, QDQ_OPSET, requantized)


def to_opset(model, opset: int):
    """``model`` at default-domain opset ``opset`` at least (``onnx.version_converter``; unchanged when newer)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= opset:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, opset)


def fp16_scale(scale: np.ndarray) -> np.ndarray:
    """Each scale rounded up to the nearest float16 value (at least the smallest subnormal), as float16."""
    s = np.asarray(scale, np.float32)
    h = np.atleast_1d(np.clip(s, FP16_TINY, FP16_MAX).astype(np.float16))
    low = h.astype(np.float32) < np.atleast_1d(s)
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h.reshape(s.shape)


def _round_scales(model) -> int:
    """Store every Q/DQ scale as its float16 value (in float32 until the conversion); re-quantize weights
    whose rounded channel scale moves a level. Returns the channels re-quantized."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()
    requantized = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in done or name not in inits or inits[name].data_type != TensorProto.FLOAT:
            continue
        done.add(name)
        old = numpy_helper.to_array(inits[name]).astype(np.float32)
        if old.size and np.abs(old).max() > FP16_MAX:
            continue  # not a float16 value at all: _wide_qdq keeps this pair FP32 with its float32 scale
        new = fp16_scale(old).astype(np.float32)
        weight = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and weight is not None and weight.data_type == TensorProto.INT8:
            q = numpy_helper.to_array(weight).astype(np.float32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if old.ndim == 1 and q.ndim > 0:
                shape[axis % q.ndim] = -1
            ratio = (old / new).reshape(shape) if old.ndim else old / new
            requant = np.clip(np.round(q * ratio), -QMAX, QMAX).astype(np.int8)
            changed = requant != q.astype(np.int8)
            if changed.any():
                reduce = tuple(d for d in range(q.ndim) if shape[d] != -1)
                requantized += int(changed.any(axis=reduce).sum()) if reduce and old.ndim else 1
                inits[node.input[0]].CopyFrom(numpy_helper.from_array(requant, node.input[0]))
        inits[name].CopyFrom(numpy_helper.from_array(new, name))
    return requantized


def _wide_qdq(model, keep: dict[str, str]) -> dict[str, str]:
    """Q/DQ nodes whose scale is beyond float16 (a tensor range above 127 x 65504: exploding activations, seen on
    random-weight Inception v3) and every node a wide DQ feeds: kept FP32, the scale as float32. In float16 the
    scale is inf and the graph's output with it. Their producers are already FP32 (outputs beyond 16384)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    wide, out = set(), {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1 and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            if scale.size and float(np.abs(scale).max()) > FP16_MAX:
                out[node.name] = f"its scale {float(np.abs(scale).max()):.3g} is beyond float16"
                if node.op_type == "DequantizeLinear":
                    wide.add(node.output[0])
    for node in model.graph.node:
        if node.name not in out and node.name not in keep and any(i in wide for i in node.input):
            out[node.name] = "reads a dequantized tensor beyond float16"
    return out


def _private_dequantize(model, keep: dict[str, str]) -> dict[str, str]:
    """Give each FP32-kept node an FP32 DequantizeLinear of its own for every input a DQ produces (same int8
    input, a float32 copy of the scale), so no Cast lands between a DQ and its consumer. Returns the new DQs."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            consumers[name].append(n)
    added: dict[str, str] = {}
    copies: dict[str, str] = {}  # DQ name -> its FP32 copy's output: one copy however many kept nodes read it
    for node in list(graph.node):
        if node.name not in keep:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.name in keep:
                continue  # not a DQ, or one already FP32 (_wide_qdq): no Cast can land between them
            if dq.name not in copies:
                scale = f"{dq.input[1]}_fp32"
                if scale not in inits:
                    inits[scale] = numpy_helper.from_array(numpy_helper.to_array(inits[dq.input[1]]), scale)
                    graph.initializer.append(inits[scale])
                copy = helper.make_node("DequantizeLinear", [dq.input[0], scale, *dq.input[2:]], [f"{name}_fp32"],
                                        name=f"{dq.name}_fp32")
                copy.attribute.extend(dq.attribute)
                graph.node.append(copy)
                added[copy.name] = f"dequantizes for {node.name} (kept FP32)"
                copies[dq.name] = copy.output[0]
            node.input[i] = copies[dq.name]
            consumers[name].remove(node)
            if not consumers[name] and name not in {o.name for o in graph.output}:
                graph.node.remove(dq)
    if added:
        used = {n for node in graph.node for n in node.input}
        for init in [i for i in graph.initializer if i.name not in used]:
            graph.initializer.remove(init)
        from deploykit.precision.graph import toposort

        toposort(model)
    return added


def casts_after_dequantize(model) -> list[str]:
    """Nodes that read a Cast of a DequantizeLinear's output (what stops TensorRT's Q/DQ fusion)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        for name in node.input:
            cast = producer.get(name)
            if cast is not None and cast.op_type == "Cast" and producer.get(cast.input[0]) is not None and \
                    producer[cast.input[0]].op_type == "DequantizeLinear":
                out.append(node.name)
    return out
