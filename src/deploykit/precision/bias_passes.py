"""The ONNX Runtime passes of bias correction (:mod:`.bias_correction`): per-channel means of layer outputs over
the images, on the whole graph or, for the later drift rounds, on its tail alone (:func:`tail_means`), fed what
the first round saw upstream of it (:class:`Upstream`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

CORRECTED_OPS = ("Conv", "Gemm")


UPSTREAM_BYTES = 1 << 29  # what the first drift round keeps for the later ones (ResNet-50, 64 images: ~35 MB)


def session(model):
    import onnxruntime as ort

    from deploykit.precision.graph import ort_providers
    from deploykit.runners.onnxrt import QDQ_FOLDING

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.log_severity_level = 3
    for key, value in QDQ_FOLDING.items():  # the Q/DQ graph's own semantics, as every deploykit session runs it
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=ort_providers())


def run_means(session, names: list[str], batches: Iterable[np.ndarray], max_chunk: int, keep: Sequence[str] = ()):
    """Image-weighted means of the graph outputs ``names`` over ``batches`` (None: no image ran), and per run the
    outputs ``keep`` (``(feeds, images)``, to feed a tail graph :func:`tail_means`; None when they would hold
    more than ``UPSTREAM_BYTES``)."""
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    feeds: list | None = [] if keep else None
    held = 0

    def runs():
        nonlocal feeds, held
        for batch in batches:
            step = fixed or max(1, min(len(batch), max_chunk))
            for start in range(0, len(batch), step):
                chunk = np.ascontiguousarray(batch[start:start + step], np.float32)
                if fixed and len(chunk) < fixed:
                    continue  # a padded image would bias the means; the shift is an average: a few images fewer
                values = session.run(list(names) + (list(keep) if feeds is not None else []), {inp.name: chunk})
                if feeds is not None:
                    feeds.append((dict(zip(keep, values[len(names):])), len(chunk)))
                    held += sum(v.nbytes for v in values[len(names):])
                    if held > UPSTREAM_BYTES:
                        feeds = None
                yield values[:len(names)], len(chunk)

    means = weighted_means(runs(), len(names))
    return means, (feeds or None)


def weighted_means(runs, n: int):
    sums, count = [None] * n, 0
    for values, weight in runs:
        for i, v in enumerate(values):
            sums[i] = v.astype(np.float64) * weight if sums[i] is None else sums[i] + v * weight
        count += weight
    return None if count == 0 else [s / count for s in sums]


def split_tail(model, changed: set[str]):
    """The tail of ``model`` below the nodes ``changed`` (their bias is what later drift rounds change): the
    indices of the nodes to run again (those downstream of ``changed``, and the constant nodes they read) and the
    tensors they read from upstream (the frontier, the same in every round). None when the graph has subgraphs or
    the tail reads the graph input itself."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input if i.name not in inits}
    dynamic, downstream, tail = set(inputs), set(), set()
    producer = {}
    for i, node in enumerate(graph.node):
        if any(a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS: If, Loop, Scan
            return None
        ins = [x for x in node.input if x]
        for out in node.output:
            producer[out] = i
        if any(x in dynamic for x in ins):
            dynamic.update(node.output)
        if node.name in changed or any(x in downstream for x in ins):
            downstream.update(node.output)
            tail.add(i)
    frontier, todo = set(), [x for i in tail for x in graph.node[i].input if x]
    while todo:
        x = todo.pop()
        if x not in producer or producer[x] in tail:
            if x in inputs:
                return None
            continue
        if x in dynamic:
            frontier.add(x)
        else:  # a constant subgraph (a weight's DequantizeLinear): run it in the tail too
            tail.add(producer[x])
            todo.extend(y for y in graph.node[producer[x]].input if y)
    return sorted(tail), sorted(frontier)


def tail_means(model, layers, upstream) -> dict[str, np.ndarray]:
    """:func:`layer_means` of ``model`` on the tail below ``upstream.changed`` alone, fed ``upstream.feeds``."""
    import onnx
    from onnx import helper

    model, names, found = with_means(model, layers)
    split = split_tail(model, upstream.changed)
    if not names or split is None or split[1] != upstream.frontier:
        return {}
    keep, frontier = split
    first = upstream.feeds[0][0]
    tail = onnx.ModelProto()
    tail.CopyFrom(model)
    graph = tail.graph
    nodes = [graph.node[i] for i in keep]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {x for n in nodes for x in n.input}
    kept_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.input[:]
    graph.input.extend(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(first[name].dtype), None)
                       for name in frontier)
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    tail_session = session(tail)
    values = weighted_means(((tail_session.run(names, feeds), n) for feeds, n in upstream.feeds), len(names))
    return {} if values is None else dict(zip(found, values))


class Upstream:
    """What the first drift round saw upstream of the tail layers: the frontier tensors per run."""

    def __init__(self, changed: set[str], frontier: list[str], feeds: list) -> None:
        self.changed, self.frontier, self.feeds = changed, frontier, feeds


def channel_axes(node, weight_rank: int | None) -> list[int] | None:
    """The axes a per-output-channel mean of a Conv/Gemm output reduces over; None for a layer not corrected
    (a Gemm with transA, a Conv whose weight rank is unknown)."""
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute}
        return None if attrs.get("transA", 0) or weight_rank not in (None, 2) else [0]
    return None if weight_rank is None else [0] + list(range(2, weight_rank))


def add_mean(graph, tensor: str, axes_name: str, mean: str) -> str:
    """Append ``mean = ReduceMean(tensor, axes)`` to ``graph`` as a graph output; returns its name."""
    from onnx import helper

    graph.node.append(helper.make_node("ReduceMean", [tensor, axes_name], [mean], keepdims=0, name=mean))
    graph.output.append(helper.make_empty_tensor_value_info(mean))
    return mean


def with_means(model, layers):
    """A copy of ``model`` with the per-output-channel mean of each of ``layers``' outputs as a graph output; the
    names of those outputs and of their layers."""
    from onnx import numpy_helper

    model = copy_model(model)
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    names, found = [], []
    for layer in layers:
        node = nodes.get(layer.node)
        if node is None or node.op_type not in CORRECTED_OPS:
            continue
        axes = channel_axes(node, output_rank(model, node))
        if axes is None:
            continue
        axes_name = f"{layer.node}__drift_axes"
        graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
        names.append(add_mean(graph, node.output[0], axes_name, f"{layer.node}__drift_mean"))
        found.append(layer.node)
    return model, names, found


def layer_means(model, layers, batches, max_chunk: int, keep_for: set[str] | None = None):
    """Per layer (by node name), the per-output-channel mean of its output in ``model`` (FP32 or Q/DQ); with
    ``keep_for`` (node names) also an :class:`Upstream` of what the nodes below them read from above, so that
    rounds which change only those nodes' biases run the tail alone (None where that cannot be done)."""
    model, names, found = with_means(model, layers)
    if not names:
        return {}, None
    split = split_tail(model, keep_for) if keep_for else None
    frontier = [] if split is None else split[1]
    graph = model.graph
    existing = {o.name for o in graph.output}
    from onnx import helper

    graph.output.extend(helper.make_empty_tensor_value_info(x) for x in frontier if x not in existing)
    values, feeds = run_means(session(model), names, batches, max_chunk, keep=frontier)
    upstream = Upstream(set(keep_for), frontier, feeds) if split is not None and feeds else None
    if values is None:
        return {}, None
    return {node: v for node, v in zip(found, values)}, upstream


def copy_model(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def output_rank(model, node) -> int | None:
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
