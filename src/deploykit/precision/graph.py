"""Small ONNX graph utilities the precision passes share."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from deploykit.onnx_shapes import LIGHT_INITIALIZER, infer_shapes  # noqa: F401  (precision's callers import them here)


def name_nodes(model) -> None:
    """Give every node a unique name (the passes address nodes by name)."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def save_model(model, dest, *, check: bool = True) -> None:
    """Write ``model`` to ``dest`` atomically; ``check``: run the ONNX checker on the written file first (every
    artifact; a sensitivity probe, which only ONNX Runtime reads a moment later, skips it)."""
    import onnx

    from deploykit.files import atomic_path

    with atomic_path(Path(dest)) as tmp:
        onnx.save(model, str(tmp))
        if check:
            onnx.checker.check_model(str(tmp))


def qdq_counts(model) -> dict[str, int]:
    """How many QuantizeLinear and DequantizeLinear nodes ``model`` has (the manifest's ``op_counts``)."""
    return {op: sum(1 for n in model.graph.node if n.op_type == op) for op in ("QuantizeLinear", "DequantizeLinear")}


def toposort(model) -> None:
    """Sort the nodes topologically in place (passes that append nodes leave them out of order)."""
    import onnx  # noqa: F401

    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)



def float_tensors(model) -> set[str]:
    """Names of the float32 activations (not initializers) of an ONNX model, by shape inference."""
    import onnx

    inferred = infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    return {n for n, t in types.items() if t == onnx.TensorProto.FLOAT and n not in inits}


def apply_shifts(model, shifts: dict[str, np.ndarray], nodes: Iterable[str]) -> int:
    """Add ``shifts`` to the biases of ``nodes`` (node names) in ``model`` (an onnx.ModelProto, edited in
    place): a bias shared with a node left out is copied first, a missing bias is created. Returns how many
    biases changed."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    wanted = set(nodes)
    changed = 0
    for node in model.graph.node:
        if node.name not in wanted or node.name not in shifts:
            continue
        delta = np.asarray(shifts[node.name], np.float32)
        if len(node.input) > 2 and node.input[2]:
            old = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            if old.shape != delta.shape:
                continue
            new_name = node.input[2] if users[node.input[2]] == 1 else f"{node.input[2]}__{node.name}"
        else:
            old = np.zeros_like(delta)
            new_name = f"{node.name}__bias"
            while len(node.input) < 3:
                node.input.append("")
        tensor = numpy_helper.from_array((old + delta).astype(np.float32), new_name)
        if new_name in inits:
            inits[new_name].CopyFrom(tensor)
        else:
            model.graph.initializer.append(tensor)
            inits[new_name] = tensor
        node.input[2] = new_name
        changed += 1
    return changed


def free_batch(model):
    """A copy of a fixed-batch ``model`` whose batch dimension is free, so a pass over many images runs them in
    batches instead of one at a time (ResNet-50 on 2 ORT threads: ~25% faster at 16); None when the graph's
    batch is already free or cannot be freed here. torch's exporter writes the batch into Reshape targets
    (``view(1, 2048)``): those become ``-1``. A graph with the batch baked in elsewhere (Expand, Tile,
    ConstantOfShape) is not detected here: callers check one batched run against single-image runs."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    if len(graph.input) == 0:
        return None
    dims = graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value"):
        return None
    n = dims[0].dim_value
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    constants = {node.output[0]: node for node in out.graph.node if node.op_type == "Constant"}
    for node in out.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in inits:
            target, holder = numpy_helper.to_array(inits[name]), inits[name]
        elif name in constants and constants[name].attribute and constants[name].attribute[0].name == "value":
            holder = constants[name].attribute[0].t
            target = numpy_helper.to_array(holder)
        else:
            continue
        if target.ndim != 1 or target.size == 0 or target[0] != n:
            continue
        if -1 in target[1:]:
            return None  # another free dimension: the batch cannot be freed too
        target = target.copy()
        target[0] = -1
        holder.CopyFrom(numpy_helper.from_array(target, holder.name))
    for value in list(out.graph.input[:1]) + list(out.graph.output):
        shape = value.type.tensor_type.shape.dim
        if shape and shape[0].HasField("dim_value") and shape[0].dim_value == n:
            shape[0].dim_param = "batch"
    del out.graph.value_info[:]
    return out


def ort_providers() -> list[str]:
    """The providers of the precision stage's ONNX Runtime passes (statistics, bias correction, logits): CUDA first
    where ONNX Runtime has it (onnxruntime-gpu) and PyTorch sees a CUDA GPU, else the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ["CPUExecutionProvider"]
    try:
        import torch
    except ImportError:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.cuda.is_available() else ["CPUExecutionProvider"]
