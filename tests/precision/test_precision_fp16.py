"""FP16 ONNX: the converted graph, what stays FP32 and why."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from _precision_common import _io_float32, _types


# -- FP16 ----------------------------------------------------------------------------------------------------
def test_fp16_graph_has_fp16_compute_and_fp32_io(resnet_export):
    folder = resnet_export.folder
    model = onnx.load(str(folder / "model.fp16.onnx"))
    _io_float32(model)
    types = _types(model)
    kept = set(resnet_export.precision.fp16.kept_fp32)
    compute = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "Relu", "Add", "MaxPool")]
    assert len([n for n in compute if n.op_type == "Conv"]) == 20
    for node in compute:
        if node.name in kept:
            continue
        for name in list(node.input) + list(node.output):
            if name:
                assert types[name] == TensorProto.FLOAT16, f"{node.name} edge {name} is {types[name]}, not FP16"
    fp32_inits = [i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
    assert not fp32_inits, f"weights left in FP32: {fp32_inits[:5]}"
    casts = Counter(n.op_type for n in model.graph.node)["Cast"]
    assert casts >= 2  # in and out of FP16 at least
    entry = resnet_export.manifest.artifact("model.fp16.onnx")
    assert entry["precision"] == "fp16" and entry["parity"]["passed"], entry["parity"]
    assert entry["parity"]["metrics"]["cosine_min"] >= 0.9999


def test_fp16_keeps_unsafe_nodes_in_fp32(tmp_path):
    """Softmax and a node whose values were seen beyond FP16's range stay FP32; the rest become FP16."""
    from onnx import helper

    from deploykit.precision.fp16 import convert_fp16

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Mul", ["h", "big"], ["hb"], name="scale_up"),
             helper.make_node("Softmax", ["hb"], ["y"], name="softmax", axis=-1)]
    big = numpy_helper.from_array(np.array(1e5, np.float32), "big")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w, big])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), src)
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    h = x @ numpy_helper.to_array(w)
    result = convert_fp16(src, tmp_path / "m16.onnx", {"x": 3.0, "h": float(np.abs(h).max()),
                                                      "hb": float(np.abs(h).max() * 1e5)})
    assert set(result.kept_fp32) == {"scale_up", "softmax"}
    assert "65504" in result.kept_fp32["scale_up"]
    m16 = onnx.load(str(tmp_path / "m16.onnx"))
    types = _types(m16)
    nodes16 = {n.name: n for n in m16.graph.node}
    assert types["w"] == TensorProto.FLOAT16 and types[nodes16["mm"].output[0]] == TensorProto.FLOAT16
    # the two FP32 nodes talk in FP32 directly: no FP16 round trip (which would overflow) between them
    assert nodes16["softmax"].input[0] == nodes16["scale_up"].output[0]
    assert types[nodes16["scale_up"].output[0]] == TensorProto.FLOAT
    import onnxruntime as ort

    y16 = ort.InferenceSession(str(tmp_path / "m16.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.isfinite(y16).all() and np.allclose(y16, y32, atol=1e-2)


def test_fp16_lists_nodes_the_converter_blocks(tmp_path):
    """Ops on ONNX Runtime's default FP16 block list (here Max) stay FP32 and are listed in kept_fp32."""
    from onnx import helper
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    from deploykit.precision.fp16 import convert_fp16

    assert "Max" in DEFAULT_OP_BLOCK_LIST
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    floor = numpy_helper.from_array(np.array(0.1, np.float32), "floor")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Max", ["h", "floor"], ["y"], name="clamp")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w, floor])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), src)
    result = convert_fp16(src, tmp_path / "m16.onnx", {"x": 3.0, "h": 10.0, "y": 10.0})
    assert set(result.kept_fp32) == {"clamp"} and "block list" in result.kept_fp32["clamp"]
    m16 = onnx.load(str(tmp_path / "m16.onnx"))
    types = _types(m16)
    clamp = next(n for n in m16.graph.node if n.name == "clamp")
    assert all(types[name] == TensorProto.FLOAT for name in list(clamp.input) + list(clamp.output))
    assert types[next(n for n in m16.graph.node if n.name == "mm").output[0]] == TensorProto.FLOAT16




def test_fp16_ranges_come_from_calibration_where_it_saw_the_tensor(tmp_path):
    """The FP16 range rule reads the calibration statistics for every tensor they cover, so it is not fitted to
    the verification images; only the tensors calibration did not see are measured on those images."""
    from onnx import helper

    from deploykit.precision.calib_cache import Ranges
    from deploykit.precision.ranges import CalibMethod
    from deploykit.precision.variants import _absmax

    w = numpy_helper.from_array(np.eye(8, dtype=np.float32) * 2.0, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    verify = np.full((4, 8), 100.0, np.float32)  # far beyond what calibration saw
    seen = {t: {"min": -1.0, "max": 3.0, "amax": 3.0} for t in ("x", "h", "y")}

    full = _absmax(src, model, verify, Ranges(CalibMethod("minmax"), seen, 16, "k"))
    assert full == {"x": 3.0, "h": 3.0, "y": 3.0}  # no pass over the verification images at all
    partial = _absmax(src, model, verify, Ranges(CalibMethod("minmax"), {"x": seen["x"]}, 16, "k"))
    assert partial["x"] == 3.0 and partial["h"] == partial["y"] == 200.0  # measured: 100 * 2
    assert _absmax(src, model, verify, None) == {"x": 100.0, "h": 200.0, "y": 200.0}  # FP16 only
