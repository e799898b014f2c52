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

One ONNX Runtime pass over the quantized graph does it for every layer at once: each quantized Conv/Gemm's output
and its (unquantized) input are reduced to means inside the graph, and the FP32 twin's mean output -- the original
weights on that input -- is computed from the input's mean (the layer is linear: :func:`_linear_mean`; a twin
node where that is not worked out). Running the twins cost as much as the quantized graph itself. The result is
a ``{node name: shift}`` map that the TensorRT and CPU quantizers add to the biases of the layers they put in INT8
(a layer kept in FP32 keeps its own bias).

``mode="drift"`` (the default of ``calibrate()``) then corrects the last ``rounds`` layers, one after the other,
to the FP32 *model's* output means on clean inputs (NNCF's full bias correction, on the tail): the drift that
upstream noise carries through the ReLU6s to the logits, which the local shifts leave in (measured in
docs/precision.md, "INT8 noise on depthwise networks").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from deploykit.precision.bias_passes import CORRECTED_OPS, add_mean as _add_mean
from deploykit.precision.bias_passes import channel_axes as _channel_axes, copy_model as _copy
from deploykit.precision.bias_passes import layer_means as _layer_means, output_rank as _output_rank
from deploykit.precision.bias_passes import run_means as _run_means, session as _session
from deploykit.precision.bias_passes import tail_means as _tail_means
from deploykit.precision.cpu_bias import cpu_shifted as _cpu_shifted, quantized_cpu as _quantized_cpu
from deploykit.precision.cpu_bias import zero_shifts as _zero_shifts

FOLDED_ACTIVATIONS = ("Relu", "Clip")  # ORT's quantizer drops these where the next Q's range clips the same way
DRIFT_ROUNDS = 2  # drift mode: layers (from the last) corrected to the FP32 model's means, one pass each
DEFAULT_IMAGES = 64  # images the shift is measured on: per-channel means settle well before that


def _twin_graph(qdq_model, fp32_model, layers) -> tuple[object, list[tuple]]:
    """The Q/DQ graph plus, per layer, the per-channel ReduceMean of its output and what gives the FP32 twin's: the
    mean over the images of the layer's float input, from which :func:`_linear_mean` computes the mean output of
    the layer with its FP32 weights (a Conv/Gemm is linear: the mean of its output is its weights applied to the
    means of the input windows), or, where that is not worked out (auto_pad, not 2-D), an FP32 twin node and its
    ReduceMean. ``(node, q mean output, f output, f -> twin mean or None)`` per layer."""
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
        axes_name = f"{layer.node}__bc_axes"
        added_inits[axes_name] = numpy_helper.from_array(np.array(axes, np.int64), axes_name)
        twin = _linear_mean(node, numpy_helper.to_array(weight), _constant(graph, node.input[2])
                            if len(node.input) > 2 and node.input[2] else 0.0)
        if twin is not None:
            x_mean = f"{layer.node}__bc_mean_x"
            graph.node.append(helper.make_node("ReduceMean", [x, f"{layer.node}__bc_batch"], [x_mean], keepdims=0,
                                               name=x_mean))
            added_inits[f"{layer.node}__bc_batch"] = numpy_helper.from_array(np.array([0], np.int64),
                                                                             f"{layer.node}__bc_batch")
            graph.output.append(helper.make_empty_tensor_value_info(x_mean))
            q_mean = _add_mean(graph, node.output[0], axes_name, f"{layer.node}__bc_mean_q")
            outputs.append((layer.node, q_mean, x_mean, twin))
            continue
        wname = f"{src.input[1]}__fp32_twin"
        if wname not in added_inits:
            added_inits[wname] = numpy_helper.from_array(numpy_helper.to_array(weight), wname)
        twin_in = [x, wname] + list(node.input[2:])
        twin_out = f"{layer.node}__fp32_twin_out"
        graph.node.append(helper.make_node(node.op_type, twin_in, [twin_out], name=f"{layer.node}__fp32_twin",
                                           **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        names = [_add_mean(graph, tensor, axes_name, f"{layer.node}__bc_mean_{tag}")
                 for tensor, tag in ((node.output[0], "q"), (twin_out, "f"))]
        outputs.append((layer.node, names[0], names[1], None))
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
                   damping: float = 1.0, cpu_ranges: dict[str, dict[str, float]] | None = None,
                   targets: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per quantized Conv/Gemm node, the per-output-channel shift to add to its bias (see the module doc).

    ``mode="local"``: ``shifts`` (from an earlier call) are applied to the quantized graph first: each layer's
    shift is then measured again on inputs that the corrections upstream have already moved (it replaces, not
    adds to, the earlier one: a layer's own shift does not depend on its bias).

    ``mode="drift"`` (NNCF's full bias correction, on the last ``rounds`` layers): after the local shifts (or
    ``shifts``), the last ``rounds`` quantized layers in graph order are corrected one after the other, each to
    the FP32 *model's* per-channel output mean on clean inputs: ``shift += damping * (fp32_mean - q_mean)``, with
    every correction before it applied. One pass over the FP32 graph (none when ``targets`` holds those means,
    node -> mean, as the statistics pass measures them: :func:`drift_tail`), one (twin) pass for the local shifts,
    one pass over the quantized graph for the first round and, for each later round, a pass over the graph's tail
    only (the nodes downstream of the corrected layers, fed what the first round saw upstream of them: nothing
    upstream changes between rounds). ``rounds >= len(layers)`` is NNCF's sequential correction of every
    layer. Correcting all layers at once from one measurement (Jacobi) diverges: a layer's drift is mostly its
    upstream's, so each layer takes out what upstream corrections also take out, and the surplus grows with
    depth (docs/precision.md, "Tried and not kept").

    ``cpu_ranges`` (the calibrated ``{"min", "max", "amax"}`` of every tensor): measure on ONNX Runtime's CPU
    graph instead (:func:`~deploykit.precision.int8.quantize_cpu` in its Q/DQ form: uint8 activations over the
    observed range, ORT's own choice of what to quantize) -- the shifts ``model.int8-cpu.onnx`` needs. The
    TensorRT graph's shifts carry the error of its clipped, symmetric activation ranges, which the CPU graph does
    not have (its own shifts lower its held-out logit MSE: docs/precision.md)."""
    if mode not in ("local", "drift"):
        raise ValueError(f"bias correction mode {mode!r}: 'local' or 'drift'")
    corrector = _Corrector(fp32_path, amax, plan, cpu_ranges, skip_depthwise, max_chunk)
    if mode == "local":
        return corrector.local(batches, shifts)
    batches = [np.ascontiguousarray(b, np.float32) for b in batches]
    current = corrector.local(batches, None) if shifts is None else shifts
    return corrector.drift(batches, current, rounds, targets, damping)


def local_and_drift(fp32_path: Path, amax: dict[str, float], batches: Sequence[np.ndarray], *, plan=None,
                    cpu_ranges: dict[str, dict[str, float]] | None = None, rounds: int = DRIFT_ROUNDS,
                    targets: dict[str, np.ndarray] | None = None):
    """The bias shifts of calibration (local, then drift correction of the last ``rounds`` layers) and their drift
    part: :func:`measure_shifts` twice, sharing the loaded graph (and ORT's CPU graph, built once)."""
    corrector = _Corrector(fp32_path, amax, plan, cpu_ranges)
    batches = [np.ascontiguousarray(b, np.float32) for b in batches]
    local = corrector.local(batches, None)
    bias = corrector.drift(batches, local, rounds, targets)
    drift = {k: (v - local.get(k, 0.0)).astype(np.float32) for k, v in bias.items()
             if k not in local or np.any(v != local[k])}
    return bias, drift


def drift_tail(model, plan=None, rounds: int = DRIFT_ROUNDS) -> list[tuple[str, str, list[int]]]:
    """The layers drift correction corrects in ``model`` (the FP32 graph): ``(node name, output tensor, axes)``
    per layer, the axes a per-channel mean of its output reduces besides the batch -- what the statistics pass
    measures so that drift correction needs no FP32 pass of its own."""
    from deploykit.precision.graph import name_nodes
    from deploykit.precision.int8 import plan_trt

    model = _copy(model)
    name_nodes(model)
    plan = plan or plan_trt(model)
    nodes = {n.name: n for n in model.graph.node}
    out = []
    for layer in _tail_layers(model, plan, rounds):
        node = nodes.get(layer.node)
        axes = None if node is None else _channel_axes(node, _output_rank(model, node))
        if axes is not None:
            out.append((layer.node, node.output[0], [a for a in axes if a != 0]))
    return out


def _tail_layers(fp32, plan, rounds: int, skip_depthwise: bool = False) -> list:
    layers = [layer for layer in plan.layers if layer.op_type in CORRECTED_OPS and layer.weight is not None]
    if skip_depthwise:
        layers = [layer for layer in layers if not _depthwise(fp32, layer)]
    order = {n.name: i for i, n in enumerate(fp32.graph.node)}
    return sorted(layers, key=lambda layer: order.get(layer.node, -1))[-rounds:] if rounds > 0 else []


class _Corrector:
    """One FP32 graph's bias correction: the quantized graph for a set of shifts, its local and drift passes."""

    def __init__(self, fp32_path: Path, amax, plan, cpu_ranges, skip_depthwise: bool = False,
                 max_chunk: int = 16) -> None:
        import onnx

        from deploykit.precision.graph import name_nodes
        from deploykit.precision.int8 import plan_trt

        self.fp32_path, self.amax, self.cpu_ranges, self.max_chunk = Path(fp32_path), amax, cpu_ranges, max_chunk
        self.fp32 = onnx.load(str(fp32_path))
        name_nodes(self.fp32)
        self.plan = plan or plan_trt(self.fp32)
        self.skip_depthwise = skip_depthwise
        self.layers = [layer for layer in self.plan.layers if layer.op_type in CORRECTED_OPS and
                       layer.weight is not None]
        if skip_depthwise:
            self.layers = [layer for layer in self.layers if not _depthwise(self.fp32, layer)]
        self._cpu_base = None

    def build(self, shifts):
        """The quantized graph with ``shifts``: TensorRT's by :func:`qdq_trt` (in memory, fast); ORT's CPU graph
        built once by ORT's quantizer, then given each set of shifts in its int32 biases
        (:func:`.cpu_bias.cpu_shifted`: what the quantizer writes for them), rebuilt only where that cannot be done."""
        if self.cpu_ranges is None:
            return _quantized(self.fp32, self.amax, self.plan, shifts)
        if self._cpu_base is None:  # every corrected layer with a bias (zeros where it had none) to write into
            self._cpu_base = _quantized_cpu(self.fp32_path, self.cpu_ranges, self.plan, _zero_shifts(self.fp32,
                                                                                                     self.layers))
        if not shifts:
            return _copy(self._cpu_base)
        shifted = _cpu_shifted(self._cpu_base, self.fp32, shifts, {layer.node for layer in self.plan.layers})
        return shifted if shifted is not None else _quantized_cpu(self.fp32_path, self.cpu_ranges, self.plan, shifts)

    def local(self, batches, shifts) -> dict[str, np.ndarray]:
        return _local(self.fp32, self.build, batches, self.layers, shifts, self.max_chunk)

    def drift(self, batches, current, rounds: int, targets=None, damping: float = 1.0) -> dict[str, np.ndarray]:
        current = {k: np.asarray(v, np.float32) for k, v in current.items()}
        tail = _tail_layers(self.fp32, self.plan, rounds, self.skip_depthwise)
        if targets is None or any(layer.node not in targets for layer in tail):
            targets, _ = _layer_means(self.fp32, tail, batches, self.max_chunk)
        upstream = None  # what the first round saw upstream of the tail: later rounds run the tail alone
        for layer in tail:
            if layer.node not in targets:
                continue
            model = self.build(current)
            means = _tail_means(model, [layer], upstream) if upstream is not None else {}
            if not means:
                later = layer is not tail[-1]
                means, upstream = _layer_means(model, [layer], batches, self.max_chunk,
                                               keep_for={t.node for t in tail} if later else None)
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


def _local(fp32, build, batches, layers, shifts, max_chunk) -> dict[str, np.ndarray]:
    """Local bias correction: one pass over the Q/DQ graph ``build(shifts)`` with an FP32 twin per layer (see the
    module doc)."""
    qdq = build(shifts)
    model, outputs = _twin_graph(qdq, fp32, layers)
    names = [n for _, q, f, _ in outputs for n in (q, f)]
    means = _run_means(_session(model), names, batches, max_chunk)[0] if names else None
    if means is None:
        return dict(shifts or {})
    return {node: ((twin(means[2 * j + 1]) if twin else means[2 * j + 1]) - means[2 * j]).astype(np.float32)
            for j, (node, _, _, twin) in enumerate(outputs)}


def _constant(graph, name: str):
    """The value of ``name`` in ``graph`` when it is an initializer or the DequantizeLinear of initializers (a
    quantized bias); None otherwise."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float64)
    node = next((n for n in graph.node if name in n.output), None)
    if node is None or node.op_type != "DequantizeLinear" or not all(i in inits for i in node.input if i):
        return None
    if any(a.name == "axis" and a.i != 0 for a in node.attribute):
        return None
    q, scale = (numpy_helper.to_array(inits[node.input[i]]).astype(np.float64) for i in (0, 1))
    zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 and node.input[2] \
        else 0.0
    return (q - zero) * scale


def _linear_mean(node, weight: np.ndarray, bias):
    """For a 2-D Conv (explicit pads) or a Gemm, the function from the mean over the images of its input
    (``[C, H, W]`` or ``[K]``) to the per-channel mean of its output with ``weight`` and ``bias``; None for any other
    layer, or a bias not known (the twin node is used there)."""
    if bias is None:
        return None
    attrs = {a.name: a for a in node.attribute}
    weight = weight.astype(np.float64)
    if node.op_type == "Gemm":
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        if "transA" in attrs and attrs["transA"].i or weight.ndim != 2:
            return None
        w = weight.T if "transB" in attrs and attrs["transB"].i else weight
        return lambda x: alpha * (np.asarray(x, np.float64) @ w) + beta * np.asarray(bias)
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    if node.op_type != "Conv" or weight.ndim != 4 or auto_pad not in ("", "NOTSET"):
        return None
    kh, kw = weight.shape[2:]
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1, 1]
    dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1, 1]
    group = attrs["group"].i if "group" in attrs else 1

    def mean(x):
        x = np.asarray(x, np.float64)
        if x.ndim != 3 or x.shape[0] != weight.shape[1] * group:
            raise ValueError(f"{node.name}: input mean of shape {x.shape}")
        xp = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        oh = (xp.shape[1] - dil[0] * (kh - 1) - 1) // strides[0] + 1
        ow = (xp.shape[2] - dil[1] * (kw - 1) - 1) // strides[1] + 1
        windows = np.empty((x.shape[0], kh, kw))  # each kernel tap's mean input over the output grid
        for i in range(kh):
            for j in range(kw):
                r, c = i * dil[0], j * dil[1]
                windows[:, i, j] = xp[:, r:r + strides[0] * (oh - 1) + 1:strides[0],
                                      c:c + strides[1] * (ow - 1) + 1:strides[1]].mean(axis=(1, 2))
        out_ch = weight.shape[0]
        w = weight.reshape(group, out_ch // group, *weight.shape[1:])
        m = windows.reshape(group, weight.shape[1], kh, kw)
        return np.einsum("goikl,gikl->go", w, m).reshape(out_ch) + np.asarray(bias)

    return mean


def _depthwise(model, layer) -> bool:
    node = next(n for n in model.graph.node if n.name == layer.node)
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return node.op_type == "Conv" and group > 1
