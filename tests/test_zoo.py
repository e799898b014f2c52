"""Every registry entry builds with an unusual class count and exports with FP32 parity (as torchvision tests)."""

from __future__ import annotations

import pytest

from deploykit.data import sample_images
from deploykit.errors import InputError
from deploykit.models import ModelSpec, get_spec, list_models, register_model
from deploykit.models.loading import LoadedModel
from deploykit.verify import Precision, judge, tolerance_for

EXPECTED = {
    "lenet", "alexnet", *[f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    *[f"resnet{d}" for d in (18, 34, 50, 101, 152)], "resnext50_32x4d", "wide_resnet50_2", "googlenet",
    "inception_v3", *[f"densenet{d}" for d in (121, 161, 169, 201)], "mobilenet_v2", "mobilenet_v3_small",
    "mobilenet_v3_large", "shufflenet_v2_x1_0", "squeezenet1_1", *[f"efficientnet_b{i}" for i in range(4)],
}

# At 32x32 the deeper EfficientNets end in 1x1 maps whose random-init logits reach 1e2-1e5 even with settled
# BatchNorm; 64x64 brings them down, though not to a trained model's scale (see ILL_CONDITIONED).
TEST_SIZE = {f"efficientnet_b{i}": 64 for i in range(4)}

# The only entries allowed past the FP32 max_abs_diff gate (1e-3), and why: their random-init logits are so large
# (or the net so deep) that PyTorch's own FP32 result is further than 1e-3 from the float64 truth, so ONNX Runtime
# is held to that truth instead (at most 2x PyTorch's error). Every other gate (cosine, top-1/top-5) still applies.
# Measured on CPU at TEST_SIZE / min_size with the settled BatchNorm below.
ILL_CONDITIONED = {
    "efficientnet_b0": "logits up to ~40 at 64x64; max |diff| ~1.1e-3",
    "efficientnet_b1": "logits up to ~425 at 64x64; max |diff| ~4e-2",
    "efficientnet_b2": "logits up to ~370 at 64x64; max |diff| ~4e-2",
    "efficientnet_b3": "logits up to ~140 at 64x64; max |diff| ~2.4e-2",
    "resnet152": "152 layers of FP32 rounding; max |diff| ~1.6e-3 at logits ~5",
}


def test_registry_has_the_zoo():
    assert set(list_models()) == EXPECTED
    assert get_spec("inception_v3").size == 299
    assert get_spec("lenet").preprocess().shape == (1, 28, 28)
    assert get_spec("efficientnet_b3").size == 300


def test_duplicates_rejected_and_unknown_suggests():
    with pytest.raises(ValueError, match="already registered"):
        register_model(ModelSpec("resnet18", "resnet", lambda **kw: None))
    with pytest.raises(InputError, match="resnet34"):
        get_spec("resnet43")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_and_exports_with_fp32_parity(name, tmp_path):
    import torch

    from deploykit.export import export_onnx, onnx_io
    from deploykit.runners.onnxrt import OnnxRuntimeRunner
    from deploykit.runners.torch import TorchRunner
    from deploykit.verify import compare_logits

    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build(num_classes=7).eval()
    size = TEST_SIZE.get(name, spec.min_size)
    pre = spec.preprocess().replace(height=size, width=size, resize=None if spec.resize is None else size)
    settle = sample_images().load(pre)
    _settle_batchnorm(model, torch.from_numpy(settle))
    batch = settle[::3]
    loaded = LoadedModel(model, "test", name, 7, None, pre, tmp_path / "none")
    path = export_onnx(loaded, tmp_path / "model.onnx")
    io = onnx_io(path)
    assert io["input"] == {"name": "input", "shape": [1, *pre.shape], "dtype": "float32"}
    assert io["output"]["shape"] == [1, 7]
    reference = TorchRunner(model, pre.shape).infer(batch)
    exported = OnnxRuntimeRunner(path).infer(batch)
    metrics = compare_logits(reference, exported)
    failures = judge(metrics, tolerance_for(Precision.FP32))
    if name not in ILL_CONDITIONED:
        assert failures == [], metrics
        return
    assert [f for f in failures if not f.startswith("max_abs_diff ")] == [], (ILL_CONDITIONED[name], metrics)
    if not failures:
        return
    with torch.no_grad():
        truth = model.double()(torch.from_numpy(batch).double()).numpy()
    torch_err, ort_err = float(abs(reference - truth).max()), float(abs(exported - truth).max())
    assert ort_err <= 2 * torch_err, (ILL_CONDITIONED[name], metrics, torch_err, ort_err)


def test_ill_conditioned_list_names_registry_entries():
    assert set(ILL_CONDITIONED) <= EXPECTED


def _settle_batchnorm(model, batch) -> None:
    """Give BatchNorm layers running statistics from real images, as training would.

    With default statistics (mean 0, var 1) a randomly initialised deep net's logits grow to 1e5+ and an
    absolute logit tolerance stops meaning anything; trained models sit at the scale this produces.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the settling batch
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()
