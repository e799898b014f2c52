"""FP16 and INT8 graphs of the transformer-era families (ConvNeXt, Swin v1/v2, MaxViT, ViT), on tiny instances.

Each model is built from torchvision's own classes with a few small layers at 32x32, so the graph has the same
ops as the zoo entries (LayerNorm, GELU as Erf, Softmax, MatMul between activations, Swin v2's cosine attention,
MaxViT's Einsum) and the test runs in seconds. Checked: the FP16 graph keeps LayerNorm / Softmax / norms in FP32
and computes MatMul/Gemm in FP16 within the FP16 gate; the TensorRT INT8 graph puts Q/DQ on every MatMul/Gemm
input (both inputs of activation x activation products, per-channel int8 weights), none on LayerNorm, Softmax or
the residual adds around them, and still computes the model.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from deploykit.data import sample_images
from deploykit.models.loading import LoadedModel
from deploykit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from deploykit.parity import Precision, compare_logits, judge, tolerance_for
from _precision_common import _types  # the dtype of every tensor of a graph, as the precision tests read it


def _convnext(num_classes):
    from torchvision.models import convnext

    cfg = [convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)]
    return convnext.ConvNeXt(cfg, stochastic_depth_prob=0.0, num_classes=num_classes)


def _swin(num_classes, v2=False):
    from torchvision.models import swin_transformer as st

    extra = {"block": st.SwinTransformerBlockV2, "downsample_layer": st.PatchMergingV2} if v2 else {}
    return st.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4],
                              stochastic_depth_prob=0.0, num_classes=num_classes, **extra)


def _maxvit(num_classes):
    from torchvision.models import maxvit

    return maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                         block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=num_classes)


def _vit(num_classes):
    from torchvision.models import vision_transformer

    model = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=num_classes)
    torch.nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision zero-inits the head: logits would be 0
    return model


FAMILIES = {"convnext": _convnext, "swin": _swin, "swin_v2": lambda n: _swin(n, v2=True), "maxvit": _maxvit,
            "vit": _vit}
# ops the FP16 graph must keep in FP32 in each family (Swin v2's cosine attention normalises with ReduceL2)
KEPT = {"convnext": {"LayerNormalization"}, "swin": {"LayerNormalization", "Softmax"},
        "swin_v2": {"LayerNormalization", "Softmax", "ReduceL2"}, "maxvit": {"LayerNormalization", "Softmax"},
        "vit": {"LayerNormalization", "Softmax"}}


@pytest.fixture(scope="module")
def photos32():
    pre = Preprocess(channels=3, height=32, width=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=None)
    return pre, sample_images().load(pre)


def _ort(path, batch):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": batch[i:i + 1]})[0] for i in range(len(batch))])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_fp16_and_int8_graphs(family, photos32, tmp_path):
    from deploykit.export import export_onnx
    from deploykit.precision.calibrate import collect_stats
    from deploykit.precision.fp16 import convert_fp16
    from deploykit.precision.int8 import cpu_tensors, plan_trt, quantize_trt
    from deploykit.runners.torch import TorchRunner

    pre, batch = photos32
    torch.manual_seed(0)
    module = FAMILIES[family](7).eval()
    fp32 = export_onnx(LoadedModel(module, "test", family, 7, None, pre, tmp_path / "none"), tmp_path / "m.onnx")
    reference = TorchRunner(module, pre.shape).infer(batch)
    assert judge(compare_logits(reference, _ort(fp32, batch)), tolerance_for(Precision.FP32)) == []

    model = onnx.load(str(fp32))
    stats = collect_stats(fp32, sorted(cpu_tensors(model)), [batch], histogram=False)
    absmax = {name: s.amax for name, s in stats.items()}

    # FP16: unsafe ops kept FP32 (all of them, by op type), MatMul/Gemm in FP16, within the FP16 gate
    fp16 = convert_fp16(fp32, tmp_path / "m.fp16.onnx", absmax)
    m16 = onnx.load(str(fp16.path))
    kept_ops = {n.op_type for n in m16.graph.node if n.name in fp16.kept_fp32}
    assert KEPT[family] <= kept_ops, (family, kept_ops)
    for node in m16.graph.node:
        if node.op_type in KEPT[family]:
            assert node.name in fp16.kept_fp32, f"{node.name} ({node.op_type}) not kept in FP32"
    types = _types(m16)
    products = [n for n in m16.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert products and all(types[n.output[0]] == TensorProto.FLOAT16 for n in products
                            if n.name not in fp16.kept_fp32)
    assert judge(compare_logits(reference, _ort(fp16.path, batch)), tolerance_for(Precision.FP16)) == []

    # INT8 for TensorRT: Q/DQ on every MatMul/Gemm input, nowhere near LayerNorm/Softmax/residual adds
    plan = plan_trt(model)
    amax = {t: absmax[t] for t in plan.activation_tensors}
    int8 = quantize_trt(fp32, tmp_path / "m.int8.onnx", amax, plan=plan)
    m8 = onnx.load(str(int8.path))
    inits = {i.name: i for i in m8.graph.initializer}
    producer = {o: n for n in m8.graph.node for o in n.output}
    ops = Counter(n.op_type for n in m8.graph.node)
    fp32_products = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(int8.layers) >= len(fp32_products)  # every MatMul/Gemm (and Conv) is in INT8
    act_x_act = 0
    for node in (n for n in m8.graph.node if n.op_type in ("MatMul", "Gemm")):
        for name in node.input[:2]:
            dq = producer.get(name)
            assert dq is not None and dq.op_type == "DequantizeLinear", f"{node.name}: input {name} not Q/DQ'd"
            if dq.input[0] in inits:  # a weight: int8, per output channel
                assert inits[dq.input[0]].data_type == TensorProto.INT8
                assert numpy_size(inits[dq.input[1]]) > 1, f"{node.name}: weight not per-channel"
            else:
                assert producer[dq.input[0]].op_type == "QuantizeLinear"
        act_x_act += all(producer[name].input[0] not in inits for name in node.input[:2])
    if family != "convnext":  # attention: Q x K^T and softmax x V are both quantized on both sides
        assert act_x_act >= 2 or (family == "maxvit" and ops["Einsum"]), (family, act_x_act)
    for node in m8.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceL2"):
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)
        if node.op_type == "Add" and not any(i in inits for i in node.input):
            sources = [producer.get(i) for i in node.input]
            if not any(s is not None and s.op_type == "Conv" for s in sources):  # not a conv epilogue
                assert all(s is None or s.op_type != "DequantizeLinear" for s in sources), f"{node.name} quantized"
    got = _ort(int8.path, batch)
    assert np.isfinite(got).all()
    assert compare_logits(reference, got)["cosine_min"] > 0.7, family  # random init, tiny: a loose sanity bound

    # TensorRT: the FP32, FP16 and INT8 graphs (FP32 and the default FP16 remainder) pass the operator tables
    from deploykit.precision.remainder import fp16_remainder

    remainder = fp16_remainder(int8.path, tmp_path / "m.int8-fp16.onnx", absmax)
    assert_tensorrt_ready(fp32, fp16.path, int8.path, remainder.path)


# one per CNN structure the transformer test above does not cover: residual, depthwise + SE + hard-swish,
# channel shuffle, inception concat, SiLU + SE, grouped RegNet
CNN_FAMILIES = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "googlenet", "efficientnet_b0",
                "regnet_x_400mf"]


@pytest.mark.parametrize("arch", CNN_FAMILIES)
def test_cnn_family_graphs_pass_the_tensorrt_check(arch, tmp_path):
    """The FP32, FP16 and INT8 (FP16 remainder) graphs of each CNN family's representative, as deploykit writes
    them, pass TensorRT 10.3's and 11.5's operator tables (pure graph inspection: the check itself is cheap)."""
    from deploykit.export import export_onnx
    from deploykit.models import get_spec
    from deploykit.precision.calibrate import collect_stats
    from deploykit.precision.fp16 import convert_fp16
    from deploykit.precision.int8 import cpu_tensors, plan_trt, quantize_trt
    from deploykit.precision.remainder import fp16_remainder

    spec = get_spec(arch)
    torch.manual_seed(0)
    module = spec.build(num_classes=7).eval()
    pre = spec.preprocess().replace(height=spec.min_size, width=spec.min_size, resize=None)
    fp32 = export_onnx(LoadedModel(module, "test", arch, 7, None, pre, tmp_path / "none"), tmp_path / "m.onnx")
    model = onnx.load(str(fp32))
    batch = sample_images().load(pre)[:4]
    absmax = {t: s.amax for t, s in collect_stats(fp32, sorted(cpu_tensors(model)), [batch],
                                                   histogram=False).items()}
    fp16 = convert_fp16(fp32, tmp_path / "m.fp16.onnx", absmax)
    plan = plan_trt(model)
    int8 = quantize_trt(fp32, tmp_path / "m.int8.onnx", {t: absmax[t] for t in plan.activation_tensors}, plan=plan)
    remainder = fp16_remainder(int8.path, tmp_path / "m.int8-fp16.onnx", absmax)
    assert_tensorrt_ready(fp32, fp16.path, int8.path, remainder.path)


def assert_tensorrt_ready(*paths) -> None:
    from deploykit.tensorrt.check import check_file, parse_targets

    for path in paths:
        for version, verdict in check_file(path, parse_targets("10.3,11.5")).items():
            assert verdict.ready, (path.name, version, verdict.problems)


def numpy_size(tensor) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1
