"""FP16 / INT8 ONNX: graph inspection, calibration on real photos, parity and accuracy on a trained model, errors."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from PIL import Image

from _digits import digits_arrays, train_lenet, write_imagefolder

REPO_CALIB = Path(__file__).resolve().parents[1] / "calib"  # the starter calibration photos shipped in the repo


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Trained LeNet checkpoint, a labelled held-out ImageFolder, and a calibration folder (train images)."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = digits_arrays("train")
    acc = train_lenet(root / "lenet.pt", images, labels)
    assert acc > 0.9, f"LeNet should fit digits, got {acc:.3f}"
    held_out, held_out_labels = digits_arrays("val")
    write_imagefolder(root / "test", held_out[:200], held_out_labels[:200])
    calib = root / "calib"
    calib.mkdir()
    for i in range(64):
        Image.fromarray(images[i], "L").save(calib / f"{i:04d}.png")
    return {"ckpt": root / "lenet.pt", "test": root / "test", "calib": calib}


@pytest.fixture(scope="session")
def resnet_export(tmp_path_factory, resnet18_sd):
    """ResNet-18 (3x32x32 input) exported with --fp16 and INT8 for TensorRT and CPU, calibrated on real photos."""
    from deploykit.models.loading import LoadOptions
    from deploykit.pipeline import export_folder
    from deploykit.precision import CalibMethod, Int8Target, PrecisionRequest

    out = tmp_path_factory.mktemp("r18") / "export"
    req = PrecisionRequest(fp16=True, int8=True, int8_for=(Int8Target.trt, Int8Target.cpu), calib=REPO_CALIB,
                           calib_method=CalibMethod.entropy)
    result = export_folder(resnet18_sd, out=out, options=LoadOptions(arch="resnet18", input_shape=(3, 32, 32)),
                           precision=req, verify=True)
    return result


def _types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {v.name: v.type.tensor_type.elem_type
           for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    out.update({i.name: i.data_type for i in model.graph.initializer})
    return out


def _io_float32(model) -> None:
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]


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


# -- calibration ---------------------------------------------------------------------------------------------
def test_calibration_is_cached_by_model_data_and_method(resnet_export, tmp_path):
    from deploykit.precision.calibrate import CalibMethod, calibrate, calibration_images
    from deploykit.precision.int8 import plan_trt

    folder = resnet_export.folder
    fp32 = folder / "model.onnx"
    pre = resnet_export.loaded.preprocess
    tensors = plan_trt(onnx.load(str(fp32))).activation_tensors
    images = calibration_images(REPO_CALIB, size=512)
    work = tmp_path / "c"
    work.mkdir()
    first = calibrate(fp32, tensors, images, pre, CalibMethod.minmax, cache_dir=work)
    again = calibrate(fp32, tensors, images, pre, CalibMethod.minmax, cache_dir=work)
    assert not first.cached and again.cached and again.tensors == first.tensors
    entropy = calibrate(fp32, tensors, images, pre, CalibMethod.entropy, cache_dir=work)
    percentile = calibrate(fp32, tensors, images, pre, CalibMethod.percentile, cache_dir=work)
    assert not entropy.cached and len(list(work.glob("calib-*.json"))) == 3
    fewer = calibrate(fp32, tensors, images.sample(35), pre, CalibMethod.minmax, cache_dir=work)
    assert not fewer.cached  # other images, other key
    for name in tensors:  # clipping methods never exceed the observed max
        assert 0 < entropy.amax(name) <= first.amax(name) + 1e-6
        assert 0 < percentile.amax(name) <= first.amax(name) + 1e-6


def test_entropy_threshold_clips_outliers():
    from deploykit.precision.calibrate import CalibMethod, TensorStats

    rng = np.random.default_rng(0)
    stats = TensorStats()
    x = np.abs(rng.standard_normal(500_000)).astype(np.float32)
    x[:5] = 60.0  # a few outliers stretch the max
    stats.update(x, histogram=True)
    assert stats.threshold(CalibMethod.minmax) == pytest.approx(60.0)
    assert 2.0 < stats.threshold(CalibMethod.entropy) < 10.0
    assert 3.0 < stats.threshold(CalibMethod.percentile) < 6.0


def test_tensor_stats_of_pieces_equal_those_of_their_concatenation():
    """A chunk's outputs are folded in piece by piece (no copy into one array): the min/max and histogram must be
    the ones of the concatenated chunk, for signed tensors, ReLU outputs (no |x| pass) and non-finite values."""
    from deploykit.precision.calibrate import TensorStats

    rng = np.random.default_rng(1)
    signed = [rng.standard_normal((1, 8, 5, 5)).astype(np.float32) * s for s in (1.0, 3.0, 0.5)]
    relu = [np.maximum(p, 0) for p in signed]
    broken = [signed[0].copy(), signed[1]]
    broken[0][0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    nothing_finite = [np.full((1, 2, 3, 3), np.nan, np.float32), np.full((1, 2, 3, 3), np.inf, np.float32)]
    for pieces in (signed, relu, broken, signed[:1], nothing_finite):
        whole, split, numpy_path = TensorStats(), TensorStats(), TensorStats()
        first = pieces[0] * 0.1  # a first, narrower update: the second one must grow the range exactly the same
        whole.update(first, histogram=True)
        split.update([first], histogram=True)
        numpy_path._update_numpy(first, histogram=True)  # the torch-less path: the semantics to keep
        concatenated = np.concatenate([p.ravel() for p in pieces])
        whole.update(concatenated, histogram=True)
        split.update(list(pieces), histogram=True)
        numpy_path._update_numpy(concatenated, histogram=True)
        for stats in (whole, numpy_path):
            assert (split.lo, split.hi, split.edge) == (stats.lo, stats.hi, stats.edge)
            np.testing.assert_array_equal(split.hist, stats.hist)
        assert split.hist.sum() == first.size + sum(p.size for p in pieces)


def test_histogram_of_a_strided_sample_keeps_the_ranges(monkeypatch):
    """Large tensors are histogrammed on an evenly strided sample (min/max still read every value): over a
    calibration set's worth of images the ranges each method derives must stay those of the full histogram, and
    the stride must not stripe one column."""
    import deploykit.precision.calibrate as calibrate_mod
    from deploykit.precision.calibrate import CalibMethod, TensorStats, _sample

    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    pieces = []
    for _ in range(32):  # 32 images of a ReLU-like feature map with channel-dependent spread
        x = np.maximum(rng.standard_normal((1, 64, 56, 56)) * np.linspace(0.5, 2, 64)[None, :, None, None], 0)
        x[..., 0] = 9.0  # column 0 is special (a padding border): a stride dividing the width would see it always
        x.ravel()[rng.integers(0, x.size, 20)] = rng.uniform(12, 40, 20)  # rare outliers, 1 in 10,000
        pieces.append(x.astype(np.float32))
    picked = _sample(torch.from_numpy(pieces[0]).reshape(-1), pieces[0].size // 8)
    assert pieces[0].size // 12 < picked.numel() <= pieces[0].size // 8  # stride 8 -> the prime 11
    share = float((picked == 9.0).float().mean())
    assert abs(share - 1 / 56) < 0.2 / 56  # column 0's true share, not all or nothing
    full, sampled = TensorStats(), TensorStats()
    monkeypatch.setattr(calibrate_mod, "HIST_SAMPLE", pieces[0].size)
    full.update(pieces, histogram=True)
    monkeypatch.setattr(calibrate_mod, "HIST_SAMPLE", pieces[0].size // 8)
    sampled.update(pieces, histogram=True)
    assert sampled.amax == full.amax == max(float(p.max()) for p in pieces)  # min/max read every value
    assert sampled.hist.sum() < full.hist.sum() // 8
    for method in (CalibMethod.mse, CalibMethod.entropy, CalibMethod.percentile):
        assert sampled.threshold(method) == pytest.approx(full.threshold(method), rel=0.05), method


def test_collect_stats_streams_a_dynamic_batch_in_chunks(tmp_path, monkeypatch):
    """Every tensor of a run is held at once: a dynamic-batch graph must not see the whole set in one run."""
    from onnx import helper

    import deploykit.precision.calibrate as calibrate_mod

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    src = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), src)
    sizes = []
    real = calibrate_mod._session_with_outputs

    class Recording:
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run(self, names, feed):
            sizes.append(next(iter(feed.values())).shape[0])
            return self.session.run(names, feed)

    monkeypatch.setattr(calibrate_mod, "_session_with_outputs", lambda *a: Recording(real(*a)))
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    stats = calibrate_mod.collect_stats(src, ["r", "y"], [x], histogram=False)
    assert sizes == [16, 16, 8]
    assert stats["r"].hi == pytest.approx(float(np.maximum(x, 0).max()))
    assert stats["y"].amax == pytest.approx(float(np.maximum(x, 0).max()))


def _fixed_batch_graph(path: Path, baked: bool) -> Path:
    """x [1, 300] -> Relu -> Reshape [1, 300] (torch's view: the batch in the target) -> Neg; ``baked``: a
    Reshape to [300, 1] and back first, which no batch but 1 can run."""
    from onnx import helper

    inits = [numpy_helper.from_array(np.array([1, 300], np.int64), "flat"),
             numpy_helper.from_array(np.array([300, 1], np.int64), "column")]
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    src = "r"
    if baked:
        nodes.append(helper.make_node("Reshape", ["r", "column"], ["c"]))
        src = "c"
    nodes += [helper.make_node("Reshape", [src, "flat"], ["v"]), helper.make_node("Neg", ["v"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 300])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 300])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


@pytest.mark.parametrize("baked", [False, True])
def test_collect_stats_batches_a_fixed_batch_graph_and_keeps_its_statistics(baked, tmp_path, monkeypatch):
    """A batch-1 graph runs 16 images at a time once its batch is freed (checked against single-image runs; a
    graph with the batch baked in runs one at a time), and the statistics are those of per-image updates."""
    import deploykit.precision.calibrate as calibrate_mod
    from deploykit.precision.calibrate import TensorStats, collect_stats

    src = _fixed_batch_graph(tmp_path / "g.onnx", baked)
    sizes = []
    real = calibrate_mod._session_with_outputs

    class Recording:
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run(self, names, feed):
            sizes.append(next(iter(feed.values())).shape[0])
            return self.session.run(names, feed)

    monkeypatch.setattr(calibrate_mod, "_session_with_outputs", lambda *a: Recording(real(*a)))
    monkeypatch.setattr(calibrate_mod, "HIST_SAMPLE", 64)  # 300 values an image: a strided sample (stride 5)
    x = (np.random.default_rng(0).standard_normal((40, 300)) * np.linspace(0.1, 3, 300)).astype(np.float32)
    stats = collect_stats(src, ["r", "y"], [x[:32], x[32:]], histogram=True)
    if baked:
        assert sizes[:1] == [16] and sizes[1:] == [1] * 40  # the batched try failed: one image at a time
    else:
        assert sizes == [16, 1, 1, 16, 8]  # the first chunk, its first and last image alone, then batched
    for name, values in (("r", np.maximum(x, 0)), ("y", -np.maximum(x, 0))):
        expected = TensorStats()
        expected.update([v[None] for v in values[:16]], histogram=True)
        expected.update([v[None] for v in values[16:32]], histogram=True)
        expected.update([v[None] for v in values[32:]], histogram=True)
        got = stats[name]
        assert (got.lo, got.hi, got.edge) == (expected.lo, expected.hi, expected.edge)
        np.testing.assert_array_equal(got.hist, expected.hist)
        assert got.hist.sum() == 40 * 60  # 60 of each image's 300 values


# -- a trained model: parity and accuracy --------------------------------------------------------------------
def test_digits_fp16_and_int8_keep_accuracy(digits, cli, tmp_path):
    out = tmp_path / "lenet"
    res = cli("export", digits["ckpt"], "--out", out, "--fp16", "--int8", "--int8-for", "trt", "--int8-for", "cpu",
              "--calib", digits["calib"], "--calib-method", "minmax", "--data", digits["test"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "deploykit.json").read_text())
    by_path = {a["path"]: a["parity"]["metrics"] for a in manifest["artifacts"]}
    calibration = {a["path"]: a["details"]["calibration"] for a in manifest["artifacts"] if "int8" in a["path"]}
    # each INT8 graph carries the bias shifts measured on itself (LeNet: 4 corrected layers)
    assert calibration["model.int8.onnx"]["bias_measured_on"] == "tensorrt"
    assert calibration["model.int8-cpu.onnx"]["bias_measured_on"] == "onnxruntime-cpu"
    assert calibration["model.int8.onnx"]["bias_corrected_layers"] == \
        calibration["model.int8-cpu.onnx"]["bias_corrected_layers"] > 0
    ref = by_path["model.onnx"]["reference_accuracy"]
    assert ref > 85.0
    for name in ("model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"):
        m = by_path[name]
        assert m["reference_accuracy"] == ref and m["accuracy_drop"] <= 1.0, (name, m)
        assert m["top1_agreement"] >= 0.97
    assert by_path["model.fp16.onnx"]["cosine_min"] >= 0.9999
    res = cli("verify", out, "--data", digits["test"], "--json")
    assert res.exit_code == 0, res.output
    measured = {a["path"]: a["metrics"]["top1_agreement"] for a in json.loads(res.stdout)["artifacts"]}
    # the gate moves with the flag: just above what INT8 measured fails with exit 4 and names the artifact
    gate = measured["model.int8.onnx"] + 1e-9
    res = cli("verify", out, "--data", digits["test"], "--int8-agreement", f"{min(gate, 1.0):.12f}")
    if gate <= 1.0:
        assert res.exit_code == 4 and "model.int8.onnx" in res.output
    else:  # every image agrees: no gate in [0, 1] can fail it, and one above 1 is refused as meaningless
        assert res.exit_code == 0
        bad = cli("verify", out, "--data", digits["test"], "--int8-agreement", "1.01")
        assert bad.exit_code == 1 and "between 0 and 1" in bad.output


def test_sensitivity_and_budget_on_badly_calibrated_int8(digits, tmp_path):
    """Ranges shrunk 20x clip every activation: INT8 breaks; keeping the worst layers in FP32 repairs it."""
    from deploykit.models.loading import LoadOptions, load_model
    from deploykit.export import export_onnx
    from deploykit.precision.calibrate import CalibMethod, calibrate, calibration_images
    from deploykit.precision.int8 import plan_trt, quantize_trt
    from deploykit.precision.sensitivity import fit_budget, logits_of, rank_layers, score

    loaded = load_model(digits["ckpt"], LoadOptions())
    fp32 = export_onnx(loaded, tmp_path / "model.onnx")
    plan = plan_trt(onnx.load(str(fp32)))
    ranges = calibrate(fp32, plan.activation_tensors, calibration_images(digits["calib"]), loaded.preprocess,
                       CalibMethod.minmax, cache_dir=tmp_path)
    bad = {n: ranges.amax(n) / 20 for n in plan.activation_tensors}
    from deploykit.data import scan_images

    test = scan_images(digits["test"])
    batch = test.load(loaded.preprocess)
    labels = np.array(test.labels)
    reference = logits_of(fp32, batch)

    def evaluate(excluded):
        quantize_trt(fp32, tmp_path / "probe.onnx", bad, plan=plan, exclude=excluded)
        return logits_of(tmp_path / "probe.onnx", batch)

    floor, ranking = rank_layers([layer.name for layer in plan.layers], evaluate, reference, labels)
    base = score(reference, evaluate(()), labels)
    assert base.loss > 2.0, "clipped ranges should cost accuracy"
    assert floor.loss <= 0.0 and floor.mse < 1e-9  # no layer in INT8: the FP32 graph itself
    assert len(ranking) == 5 and [c.mse_alone for c in ranking] == sorted((c.mse_alone for c in ranking), reverse=True)
    assert all(c.mse_added == pytest.approx(c.mse_alone - floor.mse) for c in ranking)
    result = fit_budget(base, ranking, 1.0, evaluate, reference, labels)
    assert result.met and 1 <= len(result.kept_fp32) <= 5
    assert score(reference, evaluate(result.kept_fp32), labels).loss <= 1.0
    assert result.to_json()["kept_fp32"] == result.kept_fp32


def _clip_calibration(monkeypatch, layer: str | None = None, factor: float = 20.0) -> None:
    """Shrink calibrated ranges ``factor``x (only the activation input of ``layer``, else every tensor): the
    clipping makes INT8 miss its gate for sure (as in the test above)."""
    import deploykit.precision.variants as build
    from deploykit.precision.int8 import plan_trt

    real = build.calibrate

    def clipped(model_path, *args, **kwargs):
        ranges = real(model_path, *args, **kwargs)
        names = set(plan_trt(onnx.load(str(model_path))).layer(layer).activations) if layer else set(ranges.tensors)
        ranges.tensors = {n: {**r, **{k: r[k] / factor for k in ("amax", "amax_u8") if k in r}} if n in names else r
                          for n, r in ranges.tensors.items()}
        return ranges

    monkeypatch.setattr(build, "calibrate", clipped)


@pytest.mark.parametrize("target", ["trt", "cpu"])
def test_export_accuracy_budget_records_fp32_layers(target, digits, tmp_path, monkeypatch):
    """End to end, for either INT8 target: one clipped range (classifier.3's input) makes INT8 miss; the 1-point
    budget on labelled data keeps that layer (ORT's CPU quantizer: at most one more) in FP32, and the manifest, the
    graph and the parity all show it."""
    from deploykit.pipeline import export_folder
    from deploykit.precision import INT8_CPU_NAME, INT8_NAME, Int8Target, PrecisionRequest

    _clip_calibration(monkeypatch, "classifier.3")
    name = INT8_NAME if target == "trt" else INT8_CPU_NAME
    req = PrecisionRequest(int8=True, int8_for=(Int8Target(target),), calib=digits["calib"], accuracy_budget=1.0)
    result = export_folder(digits["ckpt"], out=tmp_path / "b", precision=req, data=digits["test"])
    budget = result.precision.budgets[Int8Target(target)]
    assert budget.base.loss > 1.0, "clipped ranges should cost accuracy"
    assert budget.met and budget.final.loss <= 1.0 and "classifier.3" in budget.kept_fp32
    # chosen on one half of the 200 held-out digits, its loss reported on the other half
    assert (budget.n_search, budget.n_confirm) == (100, 100) and budget.confirm.loss <= 1.0
    assert budget.loss == budget.confirm.loss
    assert len(budget.kept_fp32) <= 2 and (target == "cpu" or budget.kept_fp32 == ["classifier.3"])
    assert len(budget.ranking) == 5
    entry = result.manifest.artifact(name)
    details = entry["details"]
    assert details["accuracy_budget"]["budget_pts"] == 1.0 and details["accuracy_budget"]["met"] is True
    assert details["accuracy_budget"]["confirm_images"] == 100 and details["accuracy_budget"]["confirm"]["loss_pts"] <= 1
    assert sorted(details["fp32_layers"]) == sorted(budget.kept_fp32)
    assert sorted(budget.kept_fp32) == sorted(result.precision.int8[Int8Target(target)].excluded)
    assert len(details["accuracy_budget"]["sensitivity"]) == 5
    model = onnx.load(str(tmp_path / "b" / name))
    inits = {i.name: i for i in model.graph.initializer}
    float_layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and
                    n.input[1] in inits and inits[n.input[1]].data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert len(float_layers) == len(budget.kept_fp32)  # the rest have int8 weights (DQ for trt, QLinear for cpu)
    if target == "trt":  # layers the budget moves out of INT8 go to the remainder's precision: FP16
        assert {inits[n.input[1]].data_type for n in float_layers} == {TensorProto.FLOAT16}
        assert details["remainder"] == "fp16" and details["other_layers"] == "float16"
    assert entry["parity"]["metrics"]["accuracy_drop"] <= 1.0, entry["parity"]


def test_budget_that_leaves_no_layer_in_int8_says_so(digits, tmp_path, monkeypatch):
    """Every range clipped 20x and a zero budget: every layer leaves INT8, and the export says the INT8 file has
    none left and what to do."""
    from deploykit.pipeline import export_folder
    from deploykit.precision import Int8Target, PrecisionRequest

    _clip_calibration(monkeypatch)
    req = PrecisionRequest(int8=True, calib=digits["calib"], accuracy_budget=0.0)
    result = export_folder(digits["ckpt"], out=tmp_path / "z", precision=req, data=digits["test"])
    budget = result.precision.budgets[Int8Target.trt]
    assert len(budget.kept_fp32) == len(budget.ranking) == 5
    assert any("leaves no layer in INT8" in note and "labelled --data" in note for note in result.precision.notes)


def test_accuracy_drop_gate_triggers_sensitivity(digits, tmp_path, monkeypatch):
    """With labels, an INT8 graph that passes the agreement gate but loses > 1 point is still analysed."""
    from deploykit.pipeline import export_folder
    from deploykit.precision import Int8Target, PrecisionRequest

    _clip_calibration(monkeypatch, "classifier.3")
    req = PrecisionRequest(int8=True, calib=digits["calib"], int8_agreement=0.0)
    result = export_folder(digits["ckpt"], out=tmp_path / "g", precision=req, data=digits["test"], verify=True)
    budget = result.precision.budgets[Int8Target.trt]
    assert budget.base.loss > 1.0 and len(budget.ranking) == 5 and budget.met is None
    assert "sensitivity" in result.manifest.artifact("model.int8.onnx")["details"]["accuracy_budget"]


def test_budget_split_is_disjoint_seeded_and_covers_every_image():
    from deploykit.precision.sensitivity import budget_split

    search, confirm = budget_split(21)
    assert len(search) == 11 and len(confirm) == 10 and not set(search) & set(confirm)
    assert sorted([*search, *confirm]) == list(range(21))
    assert [a.tolist() for a in budget_split(21)] == [search.tolist(), confirm.tolist()]  # same images every run


def test_budget_split_shares_the_near_ties_out():
    """Stratified by the FP32 margin, each half gets one of every pair of neighbouring margins: the 4 near-ties
    of 200 images go 2 and 2 (at random, all 4 land in one half one time in eight), on every seed."""
    from deploykit.precision.sensitivity import budget_split, margins

    reference = np.zeros((201, 5))
    reference[:, 0] = np.linspace(1.0, 9.0, 201)
    reference[[3, 50, 120, 190], 1] = reference[[3, 50, 120, 190], 0] - 1e-3  # near-ties
    assert margins(reference)[3] == pytest.approx(1e-3)
    for seed in range(20):
        search, confirm = budget_split(201, seed, reference)
        assert len(search) == 101 and len(confirm) == 100 and sorted([*search, *confirm]) == list(range(201))
        assert len({3, 50, 120, 190} & set(search)) == 2
    assert [a.tolist() for a in budget_split(201, 0, reference)] == [a.tolist() for a in budget_split(201, 0, reference)]
    one_class = budget_split(5, 0, np.zeros((5, 1)))  # no margin to stratify by: the seeded random split
    assert [a.tolist() for a in one_class] == [a.tolist() for a in budget_split(5)]


def test_expected_loss_transplants_the_noise_across_images():
    """A near-tie that happened not to flip still counts: its margin meets the noise other images showed."""
    from deploykit.precision.sensitivity import expected_loss, score

    reference = np.zeros((4, 3))
    reference[:, 0] = [5.0, 5.0, 5.0, 0.1]
    reference[3, 1] = 0.05  # image 3 is a near tie between classes 0 and 1
    assert expected_loss(reference, reference, None) == 0.0
    noisy = reference.copy()
    noisy[0, 0] -= 0.5  # image 0's margin drops by 0.5: no flip there (margin 5), but image 3's 0.1 would
    s = score(reference, noisy, None)
    assert s.loss == 0.0 and s.expected == pytest.approx(100 * (1 / 4) / 4)  # P(flip_3) = 1/4, others 0
    assert s.expected_se > 0 and 0.0 < s.within(6.25, 4) < 1.0  # 4 images: unsure either way
    assert s.to_json()["expected_loss_pts"] == pytest.approx(6.25) and "expected_loss_se_pts" in s.to_json()
    flipped = reference.copy()
    flipped[3, 1] = 1.0  # image 3 flips: counted 25 points; every image with margin < 0.95 would too
    assert score(reference, flipped, None).loss == 25.0 and expected_loss(reference, flipped, None) == 6.25
    # with labels, a flip costs [top1 == label] - [top2 == label]: losing a right answer, or gaining one
    assert expected_loss(reference, flipped, np.array([0, 0, 0, 0])) == 6.25
    assert expected_loss(reference, flipped, np.array([0, 0, 0, 1])) == -6.25
    assert expected_loss(reference, flipped, np.array([0, 0, 0, 2])) == 0.0
    assert expected_loss(reference, np.full_like(reference, np.nan), None) == 100.0
    assert expected_loss(reference[:1], reference[:1], None) is None  # one image: no distribution to transplant


def test_fit_budget_holds_the_expected_loss_too():
    """Counted on the sample the budget is met with no layer moved, but the noise says near-ties elsewhere
    would flip: the search goes on until the expected loss is within the budget too."""
    from deploykit.precision.sensitivity import LayerCost, fit_budget, score

    reference = np.zeros((100, 3))
    reference[:, 0] = np.linspace(0.05, 5.0, 100)  # margins from near-ties to sure

    def evaluate(excluded):
        out = reference.copy()
        out[-10:, 0] -= 0.0 if "a" in excluded else 2.0  # sure images lose 2.0 of margin: none flips here
        return out

    base = score(reference, evaluate(()), None)
    assert base.loss == 0.0 and base.expected > 1.0
    result = fit_budget(base, [LayerCost("a", 0.0, 0.0, 1.0)], 1.0, evaluate, reference, None)
    assert result.met and result.kept_fp32 == ["a"] and result.final.expected == 0.0


def test_within_is_the_binomial_chance_of_the_count():
    """Every image's flip chance is 3%: the chance that 128 other images count at most 1 flip (0.78 <= 1 point)
    is the binomial one; with labels a flip that gains a right answer pays for one that loses one."""
    from math import comb

    from deploykit.precision.sensitivity import score

    reference = np.zeros((100, 2))
    reference[:, 0] = 1.0
    noisy = reference.copy()
    noisy[:3, 0] -= 2.0  # 3 of 100 images flip; every image's margin (1.0) would flip under that noise
    s = score(reference, noisy, None)
    binom = sum(comb(128, k) * 0.03 ** k * 0.97 ** (128 - k) for k in range(2))
    assert s.within(1.0, 128) == pytest.approx(binom, abs=0.03) and binom < 0.2
    assert s.within(3.0, 100) > 0.6 and s.within(0.0, 100) < 0.1 and not s.holds(1.0, 128)
    labels = np.array([0, 1] * 50)  # half the flips gain a right answer: the expected drop is 0
    assert score(reference, noisy, labels).within(1.0, 128) > 0.6


def test_fit_budget_holds_the_count_the_confirmation_half_will_see():
    """Counted and expected (plus a standard error), 0.75 points are within a 1-point budget; but on 128 other
    images, where one flip is 0.78 points, 2 flips or more are 1 chance in 4: the search moves the layer. On 2000
    other images the same noise holds the budget."""
    from deploykit.precision.sensitivity import LayerCost, fit_budget, score

    reference = np.zeros((2000, 2))
    reference[:, 0] = 1.0

    def evaluate(excluded):
        out = reference.copy()
        out[:15, 0] -= 0.0 if "a" in excluded else 1.5  # 15 of 2000 flip: 0.75 points
        return out

    base = score(reference, evaluate(()), None)
    assert base.loss == pytest.approx(0.75) and base.expected + base.expected_se <= 1.0
    ranking = [LayerCost("a", 0.75, 0.0, 1.0)]
    small = fit_budget(base, ranking, 1.0, evaluate, reference, None, confirm_n=128)
    assert small.met and small.kept_fp32 == ["a"] and small.steps[0]["p_within_budget"] == 1.0
    assert fit_budget(base, ranking, 1.0, evaluate, reference, None).kept_fp32 == []  # 2000 others


def test_fit_budget_moves_redundant_layers_back_to_int8():
    """Greedy keeps a, b, c in FP32 (c gains nothing alone, so only going on past it meets the budget); {b, c}
    alone meets the budget, so pruning moves a back to INT8."""
    from deploykit.precision.sensitivity import LayerCost, Score, fit_budget

    reference = np.eye(10)[np.arange(100) % 10] * 5.0
    wrong = np.roll(reference, 1, axis=1)

    def evaluate(excluded):
        bad = 0 if {"b", "c"} <= set(excluded) else 20  # images classified wrong unless b and c are FP32
        out = reference.copy()
        out[:bad] = wrong[:bad]
        return out

    ranking = [LayerCost(n, 20.0, 1.0, gain) for n, gain in (("a", 3.0), ("b", 2.0), ("c", -1.0))]
    result = fit_budget(Score(20.0, 1.0), ranking, 1.0, evaluate, reference, None)
    assert result.met and result.kept_fp32 == ["b", "c"] and result.final.loss == 0.0
    assert [s["layer"] for s in result.steps] == ["a", "b", "c", "a"] and result.steps[-1]["back_to_int8"]


def test_export_int8_gates_are_options(digits, cli, tmp_path, monkeypatch):
    """--int8-agreement on export moves the gate that decides sensitivity and the export's own verification."""
    _clip_calibration(monkeypatch, "classifier.3", factor=4.0)  # some image surely disagrees (any remainder)
    out = tmp_path / "e"
    res = cli("export", digits["ckpt"], "--out", out, "--int8", "--calib", digits["calib"], "--data", digits["test"],
              "--int8-agreement", "1", "--int8-accuracy-drop", "0.5")
    assert res.exit_code == 4 and "model.int8.onnx" in res.output and "top1_agreement" in res.output, res.output
    assert "INT8 sensitivity" in res.output
    details = json.loads((out / "deploykit.json").read_text())["artifacts"][-1]["details"]
    assert len(details["accuracy_budget"]["sensitivity"]) == 5 and details["accuracy_budget"]["met"] is None


def test_no_verify_skips_the_gate_and_its_sensitivity_pass(digits, cli, tmp_path):
    """--no-verify means no checking: the same impossible gate neither fails the export nor starts a ranking."""
    out = tmp_path / "e"
    res = cli("export", digits["ckpt"], "--out", out, "--int8", "--calib", digits["calib"], "--data", digits["test"],
              "--int8-agreement", "1", "--no-verify")
    assert res.exit_code == 0, res.output
    assert "sensitivity" not in res.output
    entry = json.loads((out / "deploykit.json").read_text())["artifacts"][-1]
    assert entry["path"] == "model.int8.onnx" and entry["parity"] is None
    assert "accuracy_budget" not in entry["details"]


def test_verify_notes_when_onnxruntime_cannot_stand_in_for_fp16(digits, cli, tmp_path, monkeypatch):
    """ORT's FP16 run is made to disagree while PyTorch FP16 agrees: `deploykit verify` says ORT cannot stand
    in for TensorRT, in --json (a "note" key) and in the table."""
    from deploykit.pipeline import export_folder
    from deploykit.precision import PrecisionRequest
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    out = tmp_path / "f"
    export_folder(digits["ckpt"], out=out, precision=PrecisionRequest(fp16=True), verify=False)
    real = OnnxRuntimeRunner._run

    def garbled(self, batch):
        logits = real(self, batch)
        return logits[:, ::-1].copy() if self.path.name == "model.fp16.onnx" else logits

    monkeypatch.setattr(OnnxRuntimeRunner, "_run", garbled)
    res = cli("verify", out, "--data", digits["test"], "--json")
    assert res.exit_code == 4, res.output
    report = json.loads(next(line for line in res.output.splitlines() if line.startswith("{")))
    by_path = {a["path"]: a for a in report["artifacts"]}
    assert set(by_path["model.fp16.onnx"]) == {"path", "precision", "metrics", "passed", "note"}
    assert "cannot stand in for TensorRT" in by_path["model.fp16.onnx"]["note"]
    assert all("note" not in a for path, a in by_path.items() if path != "model.fp16.onnx")
    res = cli("verify", out, "--data", digits["test"])
    assert res.exit_code == 4
    table = res.output[:res.output.index("out of tolerance")] if "out of tolerance" in res.output else res.output
    assert "cannot stand in for TensorRT" in " ".join(table.replace("│", " ").split())


def test_reexport_uses_the_calibration_cache(resnet18_sd, cli, tmp_path, monkeypatch):
    """A second export of the same model with the same images and method does not run calibration again."""
    import deploykit.precision.calibrate as calibrate_mod

    args = ["export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
            "--int8", "--calib", REPO_CALIB, "--calib-method", "minmax", "--no-verify"]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "calibration cache" not in res.output
    first = json.loads((tmp_path / "o" / "deploykit.json").read_text())["artifacts"][-1]["details"]["calibration"]

    def no_second_pass(*a, **k):
        raise AssertionError("calibration ran again")

    monkeypatch.setattr(calibrate_mod, "collect_stats", no_second_pass)
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "calibration cache" in res.output and "(cached)" in res.output
    again = json.loads((tmp_path / "o" / "deploykit.json").read_text())["artifacts"][-1]["details"]["calibration"]
    assert again == first and first["cache"].startswith("calib-minmax-")


# -- errors --------------------------------------------------------------------------------------------------
def _photo_folder(path: Path, n: int, mode: str = "RGB") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    srcs = sorted(REPO_CALIB.glob("*.jpg"))
    for i in range(n):
        Image.open(srcs[i % len(srcs)]).convert(mode).save(path / f"p{i:03d}.png")
    return path


@pytest.mark.parametrize("case", ["no-default", "missing", "empty", "too-few", "all-corrupt"])
def test_calibration_errors_are_one_line(case, resnet18_sd, cli, tmp_path):
    args = ["export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
            "--int8", "--no-verify"]
    expect = {"no-default": "INT8 needs calibration images", "missing": "folder not found",
              "empty": "no readable images", "too-few": "needs at least 32", "all-corrupt": "no readable images",
              }[case]
    if case == "missing":
        args += ["--calib", tmp_path / "nope"]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args += ["--calib", tmp_path / "empty"]
    elif case == "too-few":
        args += ["--calib", _photo_folder(tmp_path / "few", 10)]
    elif case == "all-corrupt":
        bad = tmp_path / "bad"
        bad.mkdir()
        for i in range(40):
            (bad / f"x{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        args += ["--calib", bad]
    res = cli(*args)
    assert res.exit_code == 1, res.output
    assert expect in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "model.int8.onnx").exists()


def test_grayscale_calibration_for_a_colour_model_is_a_warning(resnet18_sd, cli, tmp_path):
    """A state_dict says nothing about grayscale training: calibrating a colour model on a grayscale folder is a
    warning naming --calib-grayscale (issue 13), and the export goes on."""
    res = cli("export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
              "--int8", "--no-verify", "--calib", _photo_folder(tmp_path / "gray", 40, mode="L"))
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "grayscale" in res.output and "--calib-grayscale" in res.output
    assert (tmp_path / "o" / "model.int8.onnx").is_file()


def test_corrupt_images_are_skipped_and_min_calib_lowers_the_bar(resnet18_sd, cli, tmp_path):
    calib = _photo_folder(tmp_path / "c", 10)
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = ["export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
            "--int8", "--calib", calib, "--no-verify"]
    res = cli(*args)
    assert res.exit_code == 1 and "has 10 usable image(s)" in res.output
    res = cli(*args, "--min-calib", "8", "--calib-method", "percentile")
    assert res.exit_code == 0, res.output
    assert "broken.jpg" in res.output  # the skip is reported
    assert (tmp_path / "o" / "model.int8.onnx").is_file()


def test_default_calib_folder_is_used(resnet18_sd, cli, tmp_path):
    shutil.copytree(REPO_CALIB, tmp_path / "calib")  # tests run in tmp_path (conftest)
    res = cli("export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
              "--int8", "--calib-size", "33", "--calib-method", "minmax", "--no-verify")
    assert res.exit_code == 0, res.output
    details = json.loads((tmp_path / "o" / "deploykit.json").read_text())["artifacts"][-1]["details"]
    assert details["calibration"]["images"] == 33


def test_precision_flags_need_int8(resnet18_sd, cli, tmp_path):
    base = ["export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o"]
    res = cli(*base, "--int8-for", "cpu")  # implies --int8 (issue 13), which then needs calibration images
    assert res.exit_code == 1 and "INT8 needs calibration images" in res.output
    res = cli(*base, "--calib", REPO_CALIB)
    assert res.exit_code == 1 and "--calib" in res.output
    res = cli(*base, "--int8", "--calib-method", "kl")
    assert res.exit_code == 2  # typer rejects a choice outside the enum
    for flags in (["--calib-size", "512"], ["--calib-method", "entropy"], ["--min-calib", "32"],
                  ["--int8-agreement", "0.9"], ["--int8-accuracy-drop", "2"], ["--int8-remainder", "fp32"]):
        res = cli(*base, *flags)
        assert res.exit_code == 1 and f"{flags[0]} applies only with --int8" in res.output, (flags, res.output)


def test_min_calib_is_checked_against_the_sample(resnet18_sd, cli, tmp_path):
    res = cli("export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
              "--int8", "--calib", REPO_CALIB, "--calib-size", "16", "--no-verify")
    assert res.exit_code == 1 and "raise --calib-size or lower --min-calib" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "o" / "model.int8.onnx").exists()


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
