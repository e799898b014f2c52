"""Bias correction: take out the mean shift INT8 puts on each quantized layer's output.

Rounding weights to 127 levels per channel and activations to 127 levels per tensor changes each output
channel's *mean* a little, and a shifted mean is a systematic error that the next layers amplify, unlike the
zero-mean rounding noise (Nagel et al. 2019, "Data-Free Quantization", section 4.2; NNCF's
``fast_bias_correction/`` and ``bias_correction/``). Per layer and output channel we measure

    shift = mean( layer_fp32(x) ) - mean( layer_int8(Q(x)) )

over the calibration images and add it to the layer's bias. ``x`` is the layer's input *in the quantized graph*
(the empirical variant of NNCF's full bias correction: the shift is the one this layer adds given the noisy
input it really gets, not the one it would add on clean FP32 input, which is what NNCF's fast variant measures),
and depthwise convolutions are corrected too (NNCF's fast variant skips them; on depthwise networks they carry
most of the shift: a 3x3 depthwise kernel has 9 weights per channel to round).

One ONNX Runtime pass over the quantized graph does it for every layer at once: each quantized Conv/Gemm gets an
FP32 twin fed the same (unquantized) input and original weights, and both outputs are reduced to per-channel
means inside the graph. The result is a ``{node name: shift}`` map that the TensorRT and CPU quantizers add to
the biases of the layers they put in INT8 (a layer kept in FP32 keeps its own bias).

``mode="drift"`` (the default of ``calibrate()``) then corrects the last ``rounds`` layers, one after the other,
to the FP32 *model's* output means on clean inputs (NNCF's full bias correction, on the tail): the drift that
upstream noise carries through the ReLU6s to the logits, which the local shifts leave in (measured in
docs/precision.md, "INT8 noise on depthwise networks").
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

CORRECTED_OPS = ("Conv", "Gemm")
FOLDED_ACTIVATIONS = ("Relu", "Clip")  # ORT's quantizer drops these where the next Q's range clips the same way
DRIFT_ROUNDS = 2  # drift mode: layers (from the last) corrected to the FP32 model's means, one pass each
DEFAULT_IMAGES = 64  # images the shift is measured on: per-channel means settle well before that


def _twin_graph(qdq_model, fp32_model, layers) -> tuple[object, list[tuple[str, str, str]]]:
    """The Q/DQ graph plus, per layer, an FP32 twin and per-channel ReduceMean of both outputs."""
    from onnx import helper, numpy_helper

    graph = qdq_model.graph
    fp32_inits = {i.name: i for i in fp32_model.graph.initializer}
    nodes = {n.name: n for n in graph.node}
    orig = {n.name: n for n in fp32_model.graph.node}
    fp32_producer = {o: n for n in fp32_model.graph.node for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    known = set(producer) | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    fp32_constants = {n.output[0]: n for n in fp32_model.graph.node if n.op_type == "Constant"}
    outputs = []
    added_inits = {}
    refolded: dict[str, str] = {}
    for layer in layers:
        node, src = nodes.get(layer.node), orig.get(layer.node)
        if node is None or src is None or node.op_type not in CORRECTED_OPS:
            continue
        weight = fp32_inits[src.input[1]]
        axes = _channel_axes(node, len(weight.dims))
        if axes is None:
            continue
        x = src.input[0]
        act = fp32_producer.get(x)
        if act is not None and act.op_type in FOLDED_ACTIVATIONS and x in producer and \
                producer[x].op_type != act.op_type:  # ORT's quantizer folded this Relu/Clip into a Q's range
            if x not in refolded:
                refolded[x] = _reapply(graph, act, x, fp32_inits, fp32_constants, known, added_inits)
            x = refolded[x]
        if x is None or x not in known:
            continue  # the quantizer renamed the layer's input: no twin, no shift for this layer
        wname = f"{src.input[1]}__fp32_twin"
        if wname not in added_inits:
            added_inits[wname] = numpy_helper.from_array(numpy_helper.to_array(weight), wname)
        twin_in = [x, wname] + list(node.input[2:])
        twin_out = f"{layer.node}__fp32_twin_out"
        graph.node.append(helper.make_node(node.op_type, twin_in, [twin_out], name=f"{layer.node}__fp32_twin",
                                           **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        axes_name = f"{layer.node}__bc_axes"
        added_inits[axes_name] = numpy_helper.from_array(np.array(axes, np.int64), axes_name)
        names = [_add_mean(graph, tensor, axes_name, f"{layer.node}__bc_mean_{tag}")
                 for tensor, tag in ((node.output[0], "q"), (twin_out, "f"))]
        outputs.append((layer.node, names[0], names[1]))
    graph.initializer.extend(added_inits.values())
    return qdq_model, outputs


def _reapply(graph, act, tensor: str, fp32_inits: dict, constants: dict, known: set[str],
             added_inits: dict) -> str | None:
    """Append ``act`` (a Relu/Clip of the FP32 graph) applied to ``tensor`` to ``graph``: the value the layer's
    input has before quantization where ORT's quantizer dropped the activation and let the Q's range clip instead.
    Its other inputs (Clip's bounds) come from the FP32 graph's initializers ``fp32_inits`` or Constant nodes
    ``constants`` (by output name). None when one of them cannot be found."""
    from onnx import helper

    for name in act.input[1:]:
        if not name or name in known:
            continue
        if name in fp32_inits:
            added_inits.setdefault(name, fp32_inits[name])
        elif name in constants:
            graph.node.append(constants[name])
        else:
            return None
        known.add(name)
    out = f"{tensor}__fp32_twin_act"
    graph.node.append(helper.make_node(act.op_type, [tensor, *act.input[1:]], [out], name=out,
                                       **{a.name: helper.get_attribute_value(a) for a in act.attribute}))
    known.add(out)
    return out


def measure_shifts(fp32_path: Path, amax: dict[str, float], batches: Iterable[np.ndarray], *, plan=None,
                   skip_depthwise: bool = False, shifts: dict[str, np.ndarray] | None = None,
                   max_chunk: int = 16, mode: str = "local", rounds: int = DRIFT_ROUNDS,
                   damping: float = 1.0, cpu_ranges: dict[str, dict[str, float]] | None = None
                   ) -> dict[str, np.ndarray]:
    """Per quantized Conv/Gemm node, the per-output-channel shift to add to its bias (see the module doc).

    ``mode="local"``: ``shifts`` (from an earlier call) are applied to the quantized graph first: each layer's
    shift is then measured again on inputs that the corrections upstream have already moved (it replaces, not
    adds to, the earlier one: a layer's own shift does not depend on its bias).

    ``mode="drift"`` (NNCF's full bias correction, on the last ``rounds`` layers): after the local shifts (or
    ``shifts``), the last ``rounds`` quantized layers in graph order are corrected one after the other, each to
    the FP32 *model's* per-channel output mean on clean inputs: ``shift += damping * (fp32_mean - q_mean)``, with
    every correction before it applied. One pass over the FP32 graph, one (twin) pass for the local shifts and one
    pass over the quantized graph per round; ``rounds >= len(layers)`` is NNCF's sequential correction of every
    layer. Correcting all layers at once from one measurement (Jacobi) diverges: a layer's drift is mostly its
    upstream's, so each layer takes out what upstream corrections also take out, and the surplus grows with
    depth (docs/precision.md, "Tried and not kept").

    ``cpu_ranges`` (the calibrated ``{"min", "max", "amax"}`` of every tensor): measure on ONNX Runtime's CPU
    graph instead (:func:`~deploykit.precision.int8.quantize_cpu` in its Q/DQ form: uint8 activations over the
    observed range, ORT's own choice of what to quantize) -- the shifts ``model.int8-cpu.onnx`` needs. The
    TensorRT graph's shifts carry the error of its clipped, symmetric activation ranges, which the CPU graph does
    not have (its own shifts lower its held-out logit MSE: docs/precision.md)."""
    import onnx

    from deploykit.precision.graph import name_nodes
    from deploykit.precision.int8 import plan_trt

    fp32 = onnx.load(str(fp32_path))
    name_nodes(fp32)
    plan = plan or plan_trt(fp32)
    layers = [layer for layer in plan.layers if layer.op_type in CORRECTED_OPS and layer.weight is not None]
    if skip_depthwise:
        layers = [layer for layer in layers if not _depthwise(fp32, layer)]

    def build(current):
        return _quantized(fp32, amax, plan, current) if cpu_ranges is None else \
            _quantized_cpu(fp32_path, cpu_ranges, plan, current)

    if mode == "local":
        return _local(fp32, build, batches, layers, shifts, max_chunk)
    if mode != "drift":
        raise ValueError(f"bias correction mode {mode!r}: 'local' or 'drift'")
    batches = [np.ascontiguousarray(b, np.float32) for b in batches]
    if shifts is None:
        current = _local(fp32, build, batches, layers, None, max_chunk)
    else:
        current = {k: np.asarray(v, np.float32) for k, v in shifts.items()}
    order = {n.name: i for i, n in enumerate(fp32.graph.node)}
    tail = sorted(layers, key=lambda layer: order.get(layer.node, -1))[-rounds:] if rounds > 0 else []
    targets = _layer_means(fp32, tail, batches, max_chunk)
    for layer in tail:
        if layer.node not in targets:
            continue
        means = _layer_means(build(current), [layer], batches, max_chunk)
        if layer.node in means:
            step = damping * (targets[layer.node] - means[layer.node])
            current[layer.node] = (current.get(layer.node, 0.0) + step).astype(np.float32)
    return current


def _quantized(fp32, amax, plan, shifts):
    """The TensorRT Q/DQ graph of the FP32 ``fp32`` model (not changed) with ``shifts``, in memory."""
    from deploykit.precision.int8 import qdq_trt

    model = _copy(fp32)
    qdq_trt(model, amax, plan=plan, bias=shifts)
    return model


def _quantized_cpu(fp32_path: Path, ranges, plan, shifts):
    """ONNX Runtime's CPU graph of the FP32 model with ``shifts``, in its Q/DQ form (the same quantization as the
    QOperator artifact, with every float tensor still named)."""
    import onnx

    from deploykit.precision.int8 import CpuFormat, quantize_cpu

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.onnx"
        quantize_cpu(fp32_path, path, ranges, plan=plan, fmt=CpuFormat.qdq_u8s8, bias=shifts)
        return onnx.load(str(path))


def _session(model):
    import onnxruntime as ort

    from deploykit.precision.graph import ort_providers
    from deploykit.runners.onnxrt import QDQ_FOLDING

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.log_severity_level = 3
    for key, value in QDQ_FOLDING.items():  # the Q/DQ graph's own semantics, as every deploykit session runs it
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=ort_providers())


def _run_means(session, names: list[str], batches: Iterable[np.ndarray], max_chunk: int):
    """Image-weighted means of the graph outputs ``names`` over ``batches`` (None: no image ran)."""
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    sums = [None] * len(names)
    count = 0
    for batch in batches:
        step = fixed or max(1, min(len(batch), max_chunk))
        for start in range(0, len(batch), step):
            chunk = np.ascontiguousarray(batch[start:start + step], np.float32)
            if fixed and len(chunk) < fixed:
                continue  # a padded image would bias the means; the shift is an average, a few images fewer is fine
            values = session.run(names, {inp.name: chunk})
            weight = len(chunk)
            for i, v in enumerate(values):
                sums[i] = v.astype(np.float64) * weight if sums[i] is None else sums[i] + v * weight
            count += weight
    return None if count == 0 else [s / count for s in sums]


def _channel_axes(node, weight_rank: int | None) -> list[int] | None:
    """The axes a per-output-channel mean of a Conv/Gemm output reduces over; None for a layer not corrected
    (a Gemm with transA, a Conv whose weight rank is unknown)."""
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute}
        return None if attrs.get("transA", 0) or weight_rank not in (None, 2) else [0]
    return None if weight_rank is None else [0] + list(range(2, weight_rank))


def _add_mean(graph, tensor: str, axes_name: str, mean: str) -> str:
    """Append ``mean = ReduceMean(tensor, axes)`` to ``graph`` as a graph output; returns its name."""
    from onnx import helper

    graph.node.append(helper.make_node("ReduceMean", [tensor, axes_name], [mean], keepdims=0, name=mean))
    graph.output.append(helper.make_empty_tensor_value_info(mean))
    return mean


def _layer_means(model, layers, batches, max_chunk: int) -> dict[str, np.ndarray]:
    """Per layer (by node name), the per-output-channel mean of its output in ``model`` (FP32 or Q/DQ)."""
    from onnx import numpy_helper

    model = _copy(model)
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    names, found = [], []
    for layer in layers:
        node = nodes.get(layer.node)
        if node is None or node.op_type not in CORRECTED_OPS:
            continue
        axes = _channel_axes(node, _output_rank(model, node))
        if axes is None:
            continue
        axes_name = f"{layer.node}__drift_axes"
        graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
        names.append(_add_mean(graph, node.output[0], axes_name, f"{layer.node}__drift_mean"))
        found.append(layer.node)
    if not names:
        return {}
    values = _run_means(_session(model), names, batches, max_chunk)
    if values is None:
        return {}
    return {node: v for node, v in zip(found, values)}


def _copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _output_rank(model, node) -> int | None:
    """A Conv's output rank = its weight's rank (N, C, spatial...)."""
    inits = {i.name: i for i in model.graph.initializer}
    weight = inits.get(node.input[1])
    if weight is not None:
        return len(weight.dims)
    producer = next((n for n in model.graph.node if node.input[1] in n.output), None)
    if producer is not None and producer.op_type == "DequantizeLinear":
        w = inits.get(producer.input[0])
        if w is not None:
            return len(w.dims)
    return None


def _local(fp32, build, batches, layers, shifts, max_chunk) -> dict[str, np.ndarray]:
    """Local bias correction: one pass over the Q/DQ graph ``build(shifts)`` with an FP32 twin per layer (see the
    module doc)."""
    qdq = build(shifts)
    model, outputs = _twin_graph(qdq, fp32, layers)
    names = [n for _, q, f in outputs for n in (q, f)]
    means = _run_means(_session(model), names, batches, max_chunk) if names else None
    if means is None:
        return dict(shifts or {})
    return {node: (means[2 * j + 1] - means[2 * j]).astype(np.float32) for j, (node, _, _) in enumerate(outputs)}


def _depthwise(model, layer) -> bool:
    node = next(n for n in model.graph.node if n.name == layer.node)
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return node.op_type == "Conv" and group > 1
