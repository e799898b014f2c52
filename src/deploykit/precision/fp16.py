"""FP32 ONNX -> FP16 ONNX with FP32 input and output, unsafe nodes kept in FP32.

The conversion itself is ONNX Runtime's ``onnxruntime.transformers.float16`` (the maintained successor of
onnxconverter-common's converter, shipped inside the onnxruntime wheel we already depend on): it retypes
tensors and initializers and puts Cast nodes at every FP32/FP16 boundary. We decide what stays FP32:

* op types that overflow or lose too much in FP16: exp/softmax-like ops and norms whose variance sums
  squares (:data:`UNSAFE_OPS`);
* reductions over more than :data:`LARGE_REDUCTION` elements;
* every node whose output was seen beyond :data:`FP16_SAFE_MAX` on the verification/calibration images
  (a 4x margin under FP16's 65504, because unseen images go further).

The converter also keeps FP32 every op of its own default block list (``DEFAULT_OP_BLOCK_LIST``: ``Min``,
``Max``, ``Upsample``, the ai.onnx.ml ops, ...); those nodes are listed in ``kept_fp32`` too, so the manifest and
the printed table say everything that stays FP32.

The graph keeps FP32 input/output so callers, preprocessing and TensorRT bindings do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


FP16_MAX = 65504.0
FP16_SAFE_MAX = FP16_MAX / 4
LARGE_REDUCTION = 4096
UNSAFE_OPS = ("Softmax", "LogSoftmax", "Exp", "Log", "Pow", "ReduceLogSumExp", "ReduceSumSquare", "ReduceL2",
              "ReduceLogSum", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Range",
              "CumSum", "TopK", "NonMaxSuppression", "RoiAlign")
REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceProd", "GlobalAveragePool", "GlobalLpPool")


@dataclass
class Fp16Graph:
    path: Path
    kept_fp32: dict[str, str] = field(default_factory=dict)  # node name -> why
    max_seen: float = 0.0


def _reduced_elements(node, shapes: dict[str, list], consts: dict[str, np.ndarray]) -> int | None:
    shape = shapes.get(node.input[0]) if node.input else None
    if not shape or any(d is None for d in shape):
        return None
    if node.op_type.startswith("Global"):
        return int(np.prod(shape[2:]))
    axes = None
    for attr in node.attribute:
        if attr.name == "axes":
            axes = list(attr.ints)
    if axes is None and len(node.input) > 1 and node.input[1] in consts:  # opset 18: axes is an input
        axes = [int(a) for a in consts[node.input[1]].ravel()]
    if axes is None:
        return int(np.prod(shape))  # opset 18 passes axes as an input; unknown -> all, the worst case
    return int(np.prod([shape[a] for a in axes]))


def unsafe_nodes(model, absmax: dict[str, float]) -> dict[str, str]:
    """Nodes to keep in FP32, each with the reason."""
    from deploykit.precision.graph import infer_shapes

    inferred = infer_shapes(model)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) <= 1}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    keep = {}
    for node in model.graph.node:
        if node.op_type in UNSAFE_OPS:
            keep[node.name] = f"{node.op_type} is not safe in FP16"
            continue
        if node.op_type in REDUCE_OPS:
            n = _reduced_elements(node, shapes, consts)
            if n is None or n > LARGE_REDUCTION:
                keep[node.name] = f"{node.op_type} over {n or 'an unknown number of'} elements"
                continue
        seen = max((absmax.get(out, 0.0) for out in node.output), default=0.0)
        if seen > FP16_SAFE_MAX:
            keep[node.name] = f"output reached {seen:.3g} (FP16 max 65504)"
    return keep


def convert_fp16(src: Path, dest: Path, absmax: dict[str, float], *,
                 extra_fp32: Sequence[str] = ()) -> Fp16Graph:
    """Write the FP16 graph of ``src`` to ``dest``; ``absmax`` is the largest ``|x|`` seen per tensor."""
    import onnx

    from deploykit.precision.graph import name_nodes, save_model

    model = onnx.load(str(src))
    name_nodes(model)
    keep = fp32_nodes(model, absmax, extra_fp32=extra_fp32)
    save_model(to_fp16(model, keep), dest)
    return Fp16Graph(Path(dest), keep, max(absmax.values(), default=0.0))


def fp32_nodes(model, absmax: dict[str, float], *, extra_fp32: Sequence[str] = ()) -> dict[str, str]:
    """Every node the FP16 conversion keeps in FP32, with the reason: our rules (:func:`unsafe_nodes`),
    ``extra_fp32``, and the converter's own block list. ``model``'s nodes must be named."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    _drop_initializer_value_info(model)
    keep = unsafe_nodes(model, absmax)
    for name in extra_fp32:
        keep.setdefault(name, "asked for")
    for node in model.graph.node:
        if node.op_type in DEFAULT_OP_BLOCK_LIST:
            keep.setdefault(node.name, f"{node.op_type} is on ONNX Runtime's FP16 block list (converter keeps it FP32)")
    return keep


def to_fp16(model, keep: Sequence[str] | dict[str, str]):
    """``model`` converted to FP16 with FP32 input/output, the ``keep`` nodes in FP32 (round trips removed)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from deploykit.precision.graph import infer_shapes, toposort

    _drop_initializer_value_info(model)
    # the converter's own shape inference is onnx's, on the whole model: ours, inferred without the weights, is the
    # same model at a fraction of the cost (graph.infer_shapes)
    fp16 = convert_float_to_float16(infer_shapes(model), keep_io_types=True, disable_shape_infer=True,
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST), node_block_list=sorted(keep))
    _drop_round_trips(fp16)
    _drop_duplicate_casts(fp16)
    toposort(fp16)  # the converter appends its Cast nodes at the end
    return fp16


def _drop_initializer_value_info(model) -> None:
    """Remove value_info entries that only repeat an initializer's type (torch's exporter writes them).

    The converter retypes every float value_info to FP16, so a weight used only by FP32 nodes (LayerNorm's, kept
    FP32) would be described as FP16 while stored as FP32, and each of its FP32 consumers would get a Cast of the
    same name (a graph that fails the checker: seen on ViT, whose identical random-init LayerNorm weights the
    exporter stores once)."""
    inits = {i.name for i in model.graph.initializer}
    for v in [v for v in model.graph.value_info if v.name in inits]:
        model.graph.value_info.remove(v)


def _drop_duplicate_casts(model) -> int:
    """Keep one of several identical Cast nodes that write the same tensor (the converter adds one per FP32
    consumer of an FP16 tensor, all with the same output name). Returns nodes removed."""
    seen: dict[str, tuple] = {}
    removed = 0
    for node in list(model.graph.node):
        if node.op_type != "Cast":
            continue
        key = (tuple(node.input), tuple((a.name, a.i) for a in node.attribute))
        out = node.output[0]
        if out in seen and seen[out] == key:
            model.graph.node.remove(node)
            removed += 1
        else:
            seen.setdefault(out, key)
    return removed


def _drop_round_trips(model) -> int:
    """Remove FP32 -> FP16 -> FP32 Cast pairs the converter puts between two FP32 nodes.

    The converter casts every blocked node's output to FP16 and back for the next blocked node: exactly the
    rounding (and overflow to inf) that keeping both nodes in FP32 was meant to avoid. Returns pairs removed.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    outputs = {o.name for o in graph.output}

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    removed = 0
    changed = True
    while changed:
        changed = False
        producer = {o: n for n in graph.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in graph.node:
            for name in n.input:
                consumers.setdefault(name, []).append(n)
        for c2 in list(graph.node):
            if cast_to(c2) != TensorProto.FLOAT:
                continue
            c1 = producer.get(c2.input[0])
            if c1 is None or cast_to(c1) != TensorProto.FLOAT16:
                continue
            x, t, y = c1.input[0], c2.input[0], c2.output[0]
            if y in outputs:
                graph.node.insert(list(graph.node).index(c2), helper.make_node("Identity", [x], [y], name=c2.name))
            else:
                for n in consumers.get(y, []):
                    for i, name in enumerate(n.input):
                        if name == y:
                            n.input[i] = x
            graph.node.remove(c2)
            if len(consumers.get(t, [])) == 1 and t not in outputs:
                graph.node.remove(c1)
            removed += 1
            changed = True
            break
    live = {o for n in graph.node for o in n.output}
    stale = [v for v in graph.value_info if v.name not in live]
    for v in stale:
        graph.value_info.remove(v)
    return removed
