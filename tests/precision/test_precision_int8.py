"""INT8 ONNX: the TensorRT Q/DQ graph, its FP16 remainder, the CPU graph, and the graphs the sensitivity probes build
in memory."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from _precision_common import _io_float32, _types


# -- INT8 for TensorRT ---------------------------------------------------------------------------------------
def test_int8_trt_qdq_placement(resnet_export):
    model = onnx.load(str(resnet_export.folder / "model.int8.onnx"))
    _io_float32(model)
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    ops = Counter(n.op_type for n in model.graph.node)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(convs) == 20 and len(gemms) == 1
    for node in convs + gemms:
        act, weight = producer.get(node.input[0]), producer.get(node.input[1])
        assert act is not None and act.op_type == "DequantizeLinear", f"{node.name}: activation not Q/DQ'd"
        assert producer[act.input[0]].op_type == "QuantizeLinear"
        assert weight is not None and weight.op_type == "DequantizeLinear", f"{node.name}: weight not DQ'd"
        wq = inits[weight.input[0]]
        assert wq.data_type == TensorProto.INT8  # int8 weights stored, no Q node on weights
        scale = numpy_helper.to_array(inits[weight.input[1]])
        axis = {a.name: a.i for a in weight.attribute}.get("axis")
        out_axis = 0 if node.op_type == "Conv" else (0 if any(a.name == "transB" and a.i for a in node.attribute)
                                                        else 1)
        assert axis == out_axis and scale.shape == (wq.dims[out_axis],), f"{node.name}: not per-channel"
        if len(node.input) > 2:  # bias stays float, in the FP16 remainder (TensorRT fuses it; no int32 DQ)
            assert inits[node.input[2]].data_type == TensorProto.FLOAT16
    # every zero point is an int8 zero: symmetric quantization
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any()
            assert (numpy_helper.to_array(inits[node.input[1]]) > 0).all()
    # no FP32 conv weights left, and no Q/DQ pair around every op: Relu/MaxPool/Add outputs are never quantized
    assert not [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 4]
    q_inputs = [producer.get(n.input[0]) for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert ops["QuantizeLinear"] == len({n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"})
    assert ops["DequantizeLinear"] == ops["QuantizeLinear"] + 21  # activations + one per weight
    allowed = ("Relu", "MaxPool", "Flatten", "Reshape", "ReduceMean", "GlobalAveragePool",
               "Conv",  # Conv: a downsample shortcut feeding a residual Add
               "Cast")  # the FP32 graph input cast to the FP16 remainder
    assert all(p is None or p.op_type in allowed for p in q_inputs), [p.op_type for p in q_inputs if p]
    assert ops["QuantizeLinear"] <= len(convs) + len(gemms) + 8
    # residual adds: exactly one input dequantized (the shortcut), the other straight from a Conv (fuses)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 8
    for add in adds:
        kinds = sorted(producer[i].op_type for i in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], f"{add.name}: {kinds}"
    details = resnet_export.manifest.artifact("model.int8.onnx")["details"]
    assert details["calibration"]["images"] == 40 and details["calibration"]["method"] == "entropy"


def test_int8_graphs_are_verified_in_the_manifest(resnet_export):
    folder = resnet_export.folder
    manifest = json.loads((folder / "deploykit.json").read_text())
    by_path = {a["path"]: a for a in manifest["artifacts"]}
    assert set(by_path) >= {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"}
    assert by_path["model.int8-cpu.onnx"]["precision"] == "int8-cpu"
    for name in ("model.int8.onnx", "model.int8-cpu.onnx"):
        parity = by_path[name]["parity"]
        assert parity["reference"] == "pytorch" and "top1_agreement" in parity["metrics"]
    assert list(folder.glob("calib-entropy-*.json"))


def test_export_records_seconds_per_stage(resnet_export):
    from deploykit.manifest import Manifest

    timings = json.loads((resnet_export.folder / "deploykit.json").read_text())["timings"]
    for stage in ("load", "onnx", "calibration", "bias_correction", "fp16_ranges", "fp16", "reference_logits",
                  "quantize_trt", "quantize_cpu", "gate_trt", "gate_cpu", "verify"):
        assert timings[stage] > 0, stage
    assert sum(timings.values()) == pytest.approx(resnet_export.timings.total, abs=0.01)
    assert Manifest.load(resnet_export.folder).timings == timings  # read back, and kept by the next save


def test_manifest_timings_are_checked(resnet_export, tmp_path):
    from deploykit.errors import InputError
    from deploykit.manifest import Manifest

    shutil.copytree(resnet_export.folder, tmp_path / "f")
    path = tmp_path / "f" / "deploykit.json"
    data = json.loads(path.read_text())
    for bad in ({"calibration": -1.0}, {"calibration": "fast"}, ["calibration"], {"../x": 1.0}):
        path.write_text(json.dumps({**data, "timings": bad}))
        with pytest.raises(InputError, match="timings"):
            Manifest.load(tmp_path / "f")


def _dq_consumers_through_cast(model) -> list[str]:
    """Consumers that read a DequantizeLinear's output through a Cast (TensorRT then cannot fuse the Q/DQ)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    bad = []
    for node in model.graph.node:
        for name in node.input:
            cast = producer.get(name)
            if cast is not None and cast.op_type == "Cast":
                src = producer.get(cast.input[0])
                if src is not None and src.op_type == "DequantizeLinear":
                    bad.append(f"{src.name} -> {cast.name} -> {node.name}")
    return bad


def test_int8_trt_fp16_remainder(resnet_export):
    """Default --int8-remainder fp16: opset 19, every Q/DQ scale float16 (DQ outputs float16 straight into its
    Conv/Gemm: no Cast between), zero points int8, FP32 only at the graph's input and output."""
    folder = resnet_export.folder
    model = onnx.load(str(folder / "model.int8.onnx"))
    _io_float32(model)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 19
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == 21 + 42
    for node in qdq:
        assert inits[node.input[1]].data_type == TensorProto.FLOAT16, f"{node.name}: scale not float16"
        assert inits[node.input[2]].data_type == TensorProto.INT8
    assert _dq_consumers_through_cast(model) == []
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert [producer[i].op_type for i in node.input[:2]] == ["DequantizeLinear"] * 2, node.name
    assert not [i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
    types = _types(model)
    float32 = {name for name, t in types.items() if t == TensorProto.FLOAT}
    assert float32 == {model.graph.input[0].name, model.graph.output[0].name}  # the rest is FP16 (or int8)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 and {casts[0].input[0], casts[-1].output[0]} == float32
    entry = resnet_export.manifest.artifact("model.int8.onnx")
    details = entry["details"]
    assert details["remainder"] == "fp16" and details["other_layers"] == "float16" and details["opset"] == 19
    assert details["kept_fp32"] == {} and details["target"] == "tensorrt" and "scheme" in details
    assert entry["parity"]["passed"], entry["parity"]
    # deploykit's ORT runner runs the graph as written (ORT's WeightBiasQuantization would quantize the float16
    # bias with a float16 subnormal scale): same logits as ORT with every graph optimization off
    import onnxruntime as ort

    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(folder / "model.int8.onnx"), opts, providers=["CPUExecutionProvider"])
    expected = np.concatenate([plain.run(None, {plain.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(4)])
    runner = OnnxRuntimeRunner(folder / "model.int8.onnx", threads=2)
    got = runner.infer(x)
    assert np.allclose(got, expected, atol=1e-4 * np.abs(expected).max()), np.abs(got - expected).max()
    # every deploykit session folds the weight DQs (predict, eval, bench print what verify judged); opting out
    # gives ORT's default fused path
    config = runner.session.get_session_options().get_session_config_entry
    assert config("session.disable_quant_qdq") == "1"
    fused = OnnxRuntimeRunner(folder / "model.int8.onnx", threads=2, fold_qdq=False)
    with pytest.raises(RuntimeError):  # no such entry: ORT's default
        fused.session.get_session_options().get_session_config_entry("session.disable_quant_qdq")
    cpu = onnx.load(str(folder / "model.int8-cpu.onnx"))  # the CPU graph is not touched by the remainder
    assert "remainder" not in resnet_export.manifest.artifact("model.int8-cpu.onnx")["details"]
    assert not [i for i in cpu.graph.initializer if i.data_type == TensorProto.FLOAT16]


def _two_conv_qdq(tmp_path: Path, *, tiny_channel: bool = False) -> tuple[Path, Path, dict]:
    """x -> conv1 -> relu -> conv2 -> y (FP32), and its TensorRT Q/DQ graph (FP32 remainder)."""
    from onnx import helper

    from deploykit.precision.int8 import plan_trt, quantize_trt

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.2
    if tiny_channel:  # channel 0's scale (|w| max / 127 = 52.05 * 2**-24) is a float16 subnormal: rounded up 2%
        w2[0] *= 127 * 52.05 * 2.0 ** -24 / np.abs(w2[0]).max()
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), src)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    import torch

    r1 = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w1), padding=1)).numpy()
    amax = {"x": float(np.abs(x).max()), "r1": float(r1.max())}
    q32 = tmp_path / "q32.onnx"
    quantize_trt(src, q32, amax, plan=plan_trt(onnx.load(str(src))))
    return src, q32, {"x": x, "w2": w2}


def test_fp16_remainder_keeps_unsafe_nodes_fp32_with_their_own_dequantize(tmp_path):
    """A conv whose output was seen beyond FP16's safe range stays FP32, fed by FP32 DequantizeLinear copies of
    its own (float32 scales): still no Cast between a DQ and its consumer; the rest is FP16 and runs on ORT."""
    from deploykit.precision.remainder import fp16_remainder

    src, q32, data = _two_conv_qdq(tmp_path)
    q16 = tmp_path / "q16.onnx"
    result = fp16_remainder(q32, q16, {"c1": 1e5, "y": 1.0})
    assert set(result.kept_fp32) == {"conv1", "x_DequantizeLinear_fp32", "w1_DequantizeLinear_fp32"}
    model = onnx.load(str(q16))
    assert _dq_consumers_through_cast(model) == []
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    conv1, conv2 = nodes["conv1"], nodes["conv2"]
    for i in conv1.input[:2]:
        dq = producer[i]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[1]].data_type == TensorProto.FLOAT
    for i in conv2.input[:2]:
        dq = producer[i]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[1]].data_type == TensorProto.FLOAT16
    # the activation's Q stays FP16; its FP32 DQ copy reads the same int8 tensor with the same scale value
    q = producer[producer[conv1.input[0]].input[0]]
    assert q.op_type == "QuantizeLinear" and inits[q.input[1]].data_type == TensorProto.FLOAT16
    assert numpy_helper.to_array(inits[q.input[1]]).astype(np.float32) == \
        numpy_helper.to_array(inits[producer[conv1.input[0]].input[1]])
    import onnxruntime as ort

    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": data["x"]})[0]
    y32, y16 = run(q32), run(q16)
    assert y16.dtype == np.float32 and np.allclose(y16, y32, atol=2e-2 * np.abs(y32).max())


def test_fp16_remainder_requantizes_weights_whose_scale_is_a_float16_subnormal(tmp_path):
    """Scales round up to float16; a channel whose scale is subnormal in float16 is re-quantized to it, so its
    weights dequantize to what they did in FP32 (within half a level), not to a scale off by percents."""
    from deploykit.precision.remainder import fp16_remainder, fp16_scale

    scales = np.array([1e-3, 3e-6, 1e-12, 0.5], np.float32)
    rounded = fp16_scale(scales)
    assert rounded.dtype == np.float16 and (rounded.astype(np.float32) >= scales).all() and rounded[-1] == 0.5
    src, q32, data = _two_conv_qdq(tmp_path, tiny_channel=True)
    q16 = tmp_path / "q16.onnx"
    result = fp16_remainder(q32, q16, {})
    assert result.requantized >= 1 and result.kept_fp32 == {}
    model = onnx.load(str(q16))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w2"))
    scale = inits[dq.input[1]].astype(np.float32)
    assert scale.dtype == np.float32 and scale[0] < 6.1e-5  # subnormal in float16
    w = inits[dq.input[0]].astype(np.float32) * scale.reshape(-1, 1, 1, 1)
    assert np.abs(w - data["w2"]).max(axis=(1, 2, 3))[0] <= 1.01 * scale[0]


def test_int8_remainder_fp32_leaves_the_qdq_graph_in_fp32(digits, cli, tmp_path):
    out = tmp_path / "lenet32"
    res = cli("export", digits["ckpt"], "--out", out, "--int8", "--int8-remainder", "fp32", "--calib",
              digits["calib"], "--data", digits["test"])
    assert res.exit_code == 0, res.output
    model = onnx.load(str(out / "model.int8.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert not [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert Counter(n.op_type for n in model.graph.node)["Cast"] == 0
    details = json.loads((out / "deploykit.json").read_text())
    details = next(a for a in details["artifacts"] if a["path"] == "model.int8.onnx")["details"]
    assert details["remainder"] == "fp32" and details["other_layers"] == "float32"
    assert "INT8 for trt, the rest FP32" in res.output


def test_int8_cpu_uses_onnxruntime_integer_kernels(resnet_export):
    from deploykit.precision.int8 import CPU_FORMAT, CpuFormat

    model = onnx.load(str(resnet_export.folder / "model.int8-cpu.onnx"))
    _io_float32(model)
    ops = Counter(n.op_type for n in model.graph.node)
    if CPU_FORMAT is CpuFormat.qoperator_u8s8:
        assert ops["QLinearConv"] == 20 and ops["Conv"] == 0
    else:
        assert ops["Conv"] == 20 and ops["QuantizeLinear"] > 20
    int8_weights = [i for i in model.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == 20


# -- building graphs in memory (sensitivity probes) ---------------------------------------------------------------
def _shape_model(opset: int = 17, output_shape=None):
    """x -> Pad -> Conv (a weight above graph.LIGHT_INITIALIZER elements) -> Relu -> ReduceMean -> Reshape (its
    target shape an initializer) -> Gemm: the ops whose shapes read small initializers, or whose form changes
    between opsets 17 and 19 (Pad's and ReduceMean's axes)."""
    from onnx import helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 16, 3, 3)).astype(np.float32) * 0.1  # 9216 elements
    fc = rng.standard_normal((10, 64)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")]
    reduce = (helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[2, 3], keepdims=1) if opset < 18 else
              helper.make_node("ReduceMean", ["r", "axes"], ["m"], name="mean", keepdims=1))
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
             helper.make_node("Conv", ["p", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), reduce,
             helper.make_node("Reshape", ["m", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_shape_inference_without_weight_data_is_onnxs():
    """graph.infer_shapes infers on a copy whose large initializers carry no data (a probe infers twice): the
    result is onnx's own -- the same value_info (the Reshape's target, a small initializer, still read), the output
    shape filled in, every initializer back with its data -- and the model it was given is unchanged."""
    from deploykit.precision.graph import LIGHT_INITIALIZER, infer_shapes

    model = _shape_model()
    before = model.SerializeToString()
    ours, theirs = infer_shapes(model), onnx.shape_inference.infer_shapes(model)
    assert model.SerializeToString() == before
    assert numpy_helper.to_array(model.graph.initializer[0]).size > LIGHT_INITIALIZER
    assert [v.SerializeToString() for v in ours.graph.value_info] == \
        [v.SerializeToString() for v in theirs.graph.value_info]
    assert ours.graph.output[0] == theirs.graph.output[0]
    assert [d.dim_value for d in ours.graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    assert ours.SerializeToString() == theirs.SerializeToString()


def test_trt_graph_built_at_the_remainder_opset_first_is_the_same_graph(tmp_path):
    """The export converts the FP32 model to the FP16 remainder's opset once and builds every TensorRT graph (the
    artifact and each sensitivity probe) from it in memory; the artifact is the graph the file-to-file path
    (quantize, then convert the Q/DQ graph's opset, then the FP16 remainder) writes: same nodes, initializers,
    types and outputs, with ReduceMean's axes moved to an input by the converter either way (only the names the
    converter makes up for that constant differ)."""
    from deploykit.precision.int8 import plan_trt, qdq_trt, quantize_trt
    from deploykit.precision.remainder import QDQ_OPSET, fp16_remainder, remainder_fp16, to_opset

    model = _shape_model(opset=17, output_shape=[1, 10])
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    plan = plan_trt(model)
    amax = {name: 2.0 for name in plan.activation_tensors}
    absmax = {"c": 3.0, "y": 5.0}
    bias = {"conv": np.full(64, 0.01, np.float32)}
    quantize_trt(src, tmp_path / "q.onnx", amax, plan=plan, bias=bias)
    by_files = onnx.load(str(fp16_remainder(tmp_path / "q.onnx", tmp_path / "q16.onnx", absmax).path))
    in_memory = onnx.ModelProto()
    in_memory.CopyFrom(to_opset(model, QDQ_OPSET))
    graph = qdq_trt(in_memory, amax, plan=plan, bias=bias)
    in_memory, kept = remainder_fp16(in_memory, absmax)
    assert graph.path is None and kept.path is None and graph.layers == ["w", "fc"]  # friendly names: the weights
    assert in_memory.opset_import == by_files.opset_import
    assert sorted(map(_canonical, in_memory.graph.node)) == sorted(map(_canonical, by_files.graph.node))
    assert [i.SerializeToString() for i in in_memory.graph.initializer] == \
        [i.SerializeToString() for i in by_files.graph.initializer]
    assert sorted(map(_canonical, in_memory.graph.value_info)) == sorted(map(_canonical, by_files.graph.value_info))
    assert {n.op_type for n in in_memory.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Cast", "Constant"}
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, 16, 12, 12)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(run(in_memory)[0], run(by_files)[0])


def _canonical(proto) -> bytes:
    """A node or value_info with the names onnx's version converter makes up (the ReduceMean axes constant it
    adds: ``_v_<n>``, named ``Constant_<i>`` by name_nodes when it ran first) made the same."""
    import re

    copy = type(proto)()
    copy.CopyFrom(proto)
    if isinstance(copy, onnx.NodeProto):
        if copy.op_type == "Constant":
            copy.name = ""
        for field in (copy.input, copy.output):
            for i, name in enumerate(field):
                field[i] = re.sub(r"^_v_\d+$", "_v", name)
    else:
        copy.name = re.sub(r"^_v_\d+$", "_v", copy.name)
    return copy.SerializeToString()


def _branch_qdq(tmp_path: Path, r1_amax: float | None = None) -> tuple[Path, Path, np.ndarray]:
    """x -> conv1 -> relu -> r1, read by two convs (conv2a, conv2b) whose sum is y: the Q/DQ of r1 is shared by
    two quantized layers (an Inception branch point), as TensorRT's placement does. FP32-remainder Q/DQ graph."""
    from onnx import helper

    from deploykit.precision.int8 import plan_trt, quantize_trt

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    wa, wb = (rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.2 for _ in range(2))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "wa"], ["ya"], name="conv2a"),
             helper.make_node("Conv", ["r1", "wb"], ["yb"], name="conv2b"),
             helper.make_node("Add", ["ya", "yb"], ["y"], name="sum")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (wa, "wa"), (wb, "wb"))])
    src = tmp_path / "b.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), src)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    q32 = tmp_path / "b32.onnx"
    plan = plan_trt(onnx.load(str(src)))
    amax = {t: 4.0 for t in plan.activation_tensors}  # the Add's residual input too
    amax.update(x=float(np.abs(x).max()), r1=r1_amax or 4.0)
    quantize_trt(src, q32, amax, plan=plan)
    return src, q32, x


def test_fp16_remainder_gives_kept_layers_one_fp32_dequantize_per_tensor(tmp_path):
    """Two layers kept FP32 that read the same dequantized tensor share one FP32 copy of its DQ (two copies wrote
    the same tensor name twice: random-weight Inception v3 failed the checker, "not in SSA form")."""
    from deploykit.precision.remainder import fp16_remainder

    _, q32, x = _branch_qdq(tmp_path)
    result = fp16_remainder(q32, tmp_path / "b16.onnx", {"ya": 1e5, "yb": 1e5})
    assert {"conv2a", "conv2b", "r1_DequantizeLinear_fp32"} <= set(result.kept_fp32)
    model = onnx.load(str(tmp_path / "b16.onnx"))
    outputs = [o for n in model.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    assert sum(n.op_type == "DequantizeLinear" and n.input[0] == "r1_QuantizeLinear_Output" for n in model.graph.node) == 1
    import onnxruntime as ort

    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y32, y16 = run(q32), run(tmp_path / "b16.onnx")
    assert np.allclose(y16, y32, atol=2e-2 * np.abs(y32).max())


def test_fp16_remainder_keeps_qdq_with_a_scale_beyond_float16_in_fp32(tmp_path):
    """A tensor calibrated beyond 127 x 65504 (exploding activations) has a Q/DQ scale float16 cannot hold: the
    pair and what it feeds stay FP32 with the float32 scale, and the graph's output stays finite (it was inf)."""
    from deploykit.precision.remainder import fp16_remainder

    _, q32, x = _branch_qdq(tmp_path, r1_amax=1e9)
    result = fp16_remainder(q32, tmp_path / "b16.onnx", {"c1": 1e9, "r1": 1e9})
    assert {"r1_QuantizeLinear", "r1_DequantizeLinear", "conv2a", "conv2b"} <= set(result.kept_fp32)
    model = onnx.load(str(tmp_path / "b16.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["r1_scale"].data_type == TensorProto.FLOAT
    assert float(numpy_helper.to_array(inits["r1_scale"])) == pytest.approx(1e9 / 127, rel=1e-6)
    assert _dq_consumers_through_cast(model) == []
    import onnxruntime as ort

    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y32, y16 = run(q32), run(tmp_path / "b16.onnx")
    assert np.isfinite(y16).all() and np.allclose(y16, y32, atol=1e-3 * max(np.abs(y32).max(), 1e-6))
