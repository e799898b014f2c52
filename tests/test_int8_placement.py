"""Q/DQ placement of model.int8.onnx on the zoo's convolutional structures, against TensorRT's guidance.

One small instance per structure, built from the registry (torchvision's own builders), exported at a small
input: residual adds (ResNet), concat (GoogLeNet, DenseNet), channel shuffle and split (ShuffleNet v2), depthwise
convs with ReLU6 and inverted residuals (MobileNet v2), squeeze-excite with hard-swish / hard-sigmoid gates
(MobileNet v3) and with SiLU / sigmoid gates (EfficientNet). The rules (docs/precision.md, "Placement across the
zoo"): every Conv/Gemm takes its activation through one Q->DQ pair and its weight as int8 with a scale per output
channel (depthwise convs included); a tensor is quantized once whatever its consumers; Q/DQ is placed for a conv,
never for data movement (Concat, Reshape, Transpose, Split, Slice, pooling), gates (Sigmoid, HardSigmoid,
HardSwish, Mul) or clips -- TensorRT moves a Q backwards through data movement by itself; a residual Add has at
most one DQ input, its shortcut, with the other input straight from a Conv so the add fuses into that conv.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from deploykit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

# architecture -> (input side, structures it carries)
STRUCTURES = {
    "resnet18": (32, {"residual"}),
    "googlenet": (64, {"concat"}),
    "densenet121": (32, {"concat"}),
    "shufflenet_v2_x0_5": (32, {"shuffle", "concat"}),
    "mobilenet_v2": (32, {"depthwise", "residual"}),
    "mobilenet_v3_small": (32, {"depthwise", "squeeze_excite", "hardswish"}),
    "efficientnet_b0": (32, {"depthwise", "squeeze_excite", "silu"}),
}
NOT_QUANTIZED_FOR = {"Concat", "Reshape", "Transpose", "Split", "Slice", "Flatten", "MaxPool", "AveragePool",
                     "GlobalAveragePool", "ReduceMean", "Sigmoid", "HardSigmoid", "HardSwish", "Mul", "Clip",
                     "Relu"}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """arch -> (FP32 model, INT8 model, Int8Graph), ranges from a min/max pass over real photos."""
    import torch

    from deploykit.data import sample_images
    from deploykit.export import export_onnx
    from deploykit.models import build_model
    from deploykit.models.loading import LoadedModel
    from deploykit.precision.calibrate import collect_stats
    from deploykit.precision.int8 import plan_trt, quantize_trt

    root = tmp_path_factory.mktemp("placement")
    out = {}
    for arch, (side, _) in STRUCTURES.items():
        pre = Preprocess(channels=3, height=side, width=side, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=None)
        torch.manual_seed(0)
        module = build_model(arch, num_classes=7).eval()
        fp32 = export_onnx(LoadedModel(module, "test", arch, 7, None, pre, root / "none"), root / f"{arch}.onnx")
        model = onnx.load(str(fp32))
        plan = plan_trt(model)
        batch = sample_images().sample(6).load(pre)
        stats = collect_stats(fp32, plan.activation_tensors, [batch], histogram=False)
        graph = quantize_trt(fp32, root / f"{arch}.int8.onnx", {n: s.amax for n, s in stats.items()}, plan=plan)
        out[arch] = (model, onnx.load(str(graph.path)), graph, batch)
    return out


@pytest.mark.parametrize("arch", sorted(STRUCTURES))
def test_every_conv_is_int8_with_per_channel_weights(graphs, arch):
    fp32, m8, graph, _ = graphs[arch]
    inits = {i.name: i for i in m8.graph.initializer}
    producer = {o: n for n in m8.graph.node for o in n.output}
    convs = [n for n in m8.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == len(graph.layers) == sum(n.op_type in ("Conv", "Gemm") for n in fp32.graph.node)
    depthwise = 0
    for node in convs:
        act, weight = (producer.get(name) for name in node.input[:2])
        assert act is not None and act.op_type == "DequantizeLinear", f"{node.name}: activation not Q/DQ'd"
        assert producer[act.input[0]].op_type == "QuantizeLinear"
        assert weight is not None and weight.op_type == "DequantizeLinear", f"{node.name}: weight not DQ'd"
        w = inits[weight.input[0]]
        assert w.data_type == TensorProto.INT8
        scale = onnx.numpy_helper.to_array(inits[weight.input[1]])
        assert scale.size == w.dims[0 if node.op_type == "Conv" else _gemm_axis(node)], node.name  # per channel
        zero = onnx.numpy_helper.to_array(inits[weight.input[2]]) if len(weight.input) > 2 else np.zeros(1)
        assert not zero.any()  # symmetric
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        depthwise += group > 1 and group == w.dims[0]
    if "depthwise" in STRUCTURES[arch][1]:
        assert depthwise > 0, "no depthwise conv found: the test model lost its structure"


def _gemm_axis(node) -> int:
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if trans_b else 1


@pytest.mark.parametrize("arch", sorted(STRUCTURES))
def test_a_tensor_is_quantized_once_and_only_for_a_conv(graphs, arch):
    _, m8, _, _ = graphs[arch]
    producer = {o: n for n in m8.graph.node for o in n.output}
    quantized = [n.input[0] for n in m8.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized) == len(set(quantized)), "a tensor quantized twice"
    ops = Counter(n.op_type for n in m8.graph.node)
    assert ops["DequantizeLinear"] == ops["QuantizeLinear"] + ops["Conv"] + ops["Gemm"]  # + one per weight
    for node in m8.graph.node:
        if node.op_type in NOT_QUANTIZED_FOR:
            dq_inputs = [i for i in node.input if producer.get(i) is not None
                         and producer[i].op_type == "DequantizeLinear"]
            assert not dq_inputs, f"{node.name} ({node.op_type}) reads a DQ: Q/DQ placed for it, not for a conv"


@pytest.mark.parametrize("arch", sorted(a for a, (_, s) in STRUCTURES.items() if s & {"residual", "concat"}))
def test_residual_adds_fuse_into_a_conv(graphs, arch):
    _, m8, _, _ = graphs[arch]
    producer = {o: n for n in m8.graph.node for o in n.output}
    inits = {i.name for i in m8.graph.initializer}
    adds = [n for n in m8.graph.node if n.op_type == "Add" and not any(i in inits for i in n.input)]
    if "residual" in STRUCTURES[arch][1]:
        assert adds, "no residual add found"
    for node in adds:
        sources = [producer.get(i) for i in node.input]
        dq = [s for s in sources if s is not None and s.op_type == "DequantizeLinear"]
        assert len(dq) <= 1, f"{node.name}: both inputs DQ'd"
        if dq:  # the shortcut is DQ'd; the other input is the conv the add fuses into
            other = next(s for s in sources if s is not dq[0])
            assert other is not None and other.op_type == "Conv", f"{node.name}: DQ'd input beside a non-conv"


@pytest.mark.parametrize("arch", sorted(STRUCTURES))
def test_the_int8_graph_runs_and_follows_fp32(graphs, arch):
    import onnxruntime as ort

    fp32, m8, _, batch = graphs[arch]
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (fp32, m8)]
    ref, got = (np.concatenate([s.run(None, {"input": batch[i:i + 1]})[0] for i in range(len(batch))])
                for s in run)
    assert np.isfinite(got).all()
    from deploykit.parity import degenerate_reference

    if degenerate_reference(ref):  # EfficientNet at random init: logits ~1e-9, nothing to follow
        return
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-30)
    assert cos.min() > 0.5, arch  # random init: a loose sanity bound that a misplaced Q/DQ breaks


def test_cpu_graph_keeps_glue_float_where_only_float_layers_feed_it(tmp_path):
    """ORT's quantizer turns a residual Add into QLinearAdd whatever feeds it; with the layers around it moved out
    of INT8 (the accuracy budget, or every layer) that is rounding for nothing. An Add is quantized only when an
    INT8 layer feeds it, and the all-INT8 graph is unchanged."""
    import torch

    from deploykit.data import sample_images
    from deploykit.export import export_onnx
    from deploykit.models import build_model
    from deploykit.models.loading import LoadedModel
    from deploykit.precision.calibrate import CalibMethod, collect_stats
    from deploykit.precision.int8 import cpu_tensors, plan_trt, quantize_cpu

    pre = Preprocess(channels=3, height=32, width=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=None)
    torch.manual_seed(0)
    module = build_model("mobilenet_v2", num_classes=7).eval()
    fp32 = export_onnx(LoadedModel(module, "test", "mobilenet_v2", 7, None, pre, tmp_path), tmp_path / "m.onnx")
    model = onnx.load(str(fp32))
    plan = plan_trt(model)
    batch = sample_images().sample(4).load(pre)
    stats = collect_stats(fp32, cpu_tensors(model), [batch], histogram=False)
    ranges = {n: s.to_json(CalibMethod.minmax) for n, s in stats.items()}
    names = [layer.name for layer in plan.layers]

    def ops(exclude):
        graph = quantize_cpu(fp32, tmp_path / "q.onnx", ranges, plan=plan, exclude=exclude)
        return Counter(node.op_type for node in onnx.load(str(graph.path)).graph.node)

    assert ops(())["QLinearAdd"] == 10  # MobileNetV2's 10 inverted residuals
    none = ops(names)
    assert not [op for op in none if op.startswith("QLinear") or op in ("QuantizeLinear", "DequantizeLinear")], none
    half = ops(names[:len(names) // 2])  # the first half float: their adds too, the second half's stay INT8
    assert 0 < half["QLinearAdd"] < 10 and half["QLinearConv"] == len(names) - len(names) // 2 - 1  # + QGemm
