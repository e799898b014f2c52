"""Tolerances that scale with the reference's logits, and degenerate references called out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deploykit.parity import (TOLERANCES, Precision, Tolerance, compare_logits, degenerate_reference, judge,
                              tolerance_for)

OLD_KEYS = {"max_abs_diff", "mean_abs_diff", "cosine_min", "top1_agreement", "top5_agreement"}


def _logits(scale: float, n: int = 8, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, classes)) * scale


def test_fp32_gate_is_atol_plus_rtol_times_the_logit_scale():
    fp32 = tolerance_for(Precision.FP32)
    assert (fp32.max_abs_diff, fp32.max_rel_diff) == (1e-3, 1e-4)
    ref = _logits(1e11)
    ref[0, 0] = 2e12
    # Inception v3 at random init: 1.18e6 off at logits of 2e12 is float32 rounding (6e-7 relative): a pass
    cand = ref + np.where(np.arange(ref.size).reshape(ref.shape) == 0, 1.18e6, 0.0)
    metrics = compare_logits(ref, cand)
    assert OLD_KEYS <= set(metrics)  # keys are added, never renamed
    assert metrics["max_abs_diff"] == pytest.approx(1.18e6) and metrics["reference_max_abs"] == pytest.approx(2e12)
    assert metrics["max_rel_diff"] == pytest.approx(5.9e-7)
    assert judge(metrics, fp32) == []
    # at logits of ~5 the same rule allows 1.5e-3: 2e-3 fails, and the message states the rule
    ref = _logits(1.0)
    ref[0, 0] = 5.0
    cand = ref.copy()
    cand[1, 1] += 2e-3
    failures = judge(compare_logits(ref, cand), fp32)
    assert len(failures) == 1 and "max_abs_diff 0.002 > 0.001 + 0.0001 x 5 (max |reference logit|)" in failures[0]
    cand[1, 1] = ref[1, 1] + 1.4e-3
    assert judge(compare_logits(ref, cand), fp32) == []


def test_absolute_only_tolerance_still_works_and_reduced_precisions_are_scale_free():
    ref = _logits(1e6)
    metrics = compare_logits(ref, ref + 1.0)
    assert judge(metrics, Tolerance(max_abs_diff=1e-3))  # no rtol: absolute as before
    for precision in (Precision.FP16, Precision.INT8, Precision.INT8_CPU):
        tol = TOLERANCES[precision]
        assert tol.max_abs_diff is None and tol.max_rel_diff is None  # cosine / top-1 / accuracy: no scale


@pytest.mark.parametrize("case, words", [
    ("nan", "not finite"), ("vanishing", "vanish"), ("constant", "barely depend on the input"),
    ("tie", "near tie"),
])
def test_degenerate_references_are_named(case, words):
    ref = _logits(3.0)
    if case == "nan":
        ref[2, 3] = np.nan
    elif case == "vanishing":
        ref = _logits(1e-9)  # random-init MobileNet/EfficientNet: 1e-8 to 1e-19
    elif case == "constant":
        ref = np.tile(_logits(0.03, n=1), (8, 1)) + _logits(1e-9)  # ShuffleNet/GoogLeNet at random init
    else:
        ref[:, 0] = 20.0 + _logits(1.0, classes=1)[:, 0]
        ref[:, 1] = ref[:, 0] + 1e-6  # the top two classes 1e-6 apart on every image
    note = degenerate_reference(ref)
    assert note and words in note and "proves little" in note


def test_healthy_and_single_image_references_are_not_flagged():
    assert degenerate_reference(_logits(3.0)) is None
    assert degenerate_reference(_logits(3.0, n=1)) is None  # one image: constancy cannot be judged


@pytest.fixture(scope="module")
def trained_lenet(tmp_path_factory):
    from _digits import digits_arrays, train_lenet

    images, labels = digits_arrays()
    path = tmp_path_factory.mktemp("lenet") / "lenet.pt"
    acc = train_lenet(path, images[:1200], labels[:1200], epochs=3)
    assert acc > 0.8
    return path


@pytest.mark.parametrize("data", ["photos", "digits"])
def test_a_trained_model_is_never_called_degenerate(trained_lenet, data, cli, tmp_path):
    """Trained LeNet, verified on its own held-out digits and on out-of-domain photos: no note."""
    out = tmp_path / "export"
    args = ["--data", "digits"] if data == "digits" else []
    result = cli("export", trained_lenet, "--out", out, *args)
    assert result.exit_code == 0, result.output
    report = json.loads(cli("verify", out, "--json", *args).stdout)
    assert all("note" not in a for a in report["artifacts"]), report
    assert "proves little" not in result.output


def test_degenerate_reference_is_noted_in_the_verdict_and_json(cli, tmp_path):
    """A LeNet whose convolutions are zero: its logits are the same for every image; said so, and still judged."""
    from deploykit.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10)
    with torch.no_grad():
        for conv in (model.features[0], model.features[3]):
            conv.weight.zero_()
    torch.save(model.state_dict(), tmp_path / "flat.pth")
    result = cli("export", tmp_path / "flat.pth", "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output  # parity itself holds: a note, not a failure
    assert "barely depend on the input" in result.output
    report = json.loads(cli("verify", tmp_path / "export", "--json").stdout)
    (art,) = report["artifacts"]
    assert art["passed"] and "barely depend on the input" in art["note"]
    manifest = json.loads((tmp_path / "export" / "deploykit.json").read_text())
    assert "barely depend" in manifest["artifacts"][0]["parity"]["note"]


@pytest.mark.parametrize("k, n, lo, hi", [(21, 21, 0.845, 1.0), (0, 10, 0.0, 0.278), (97, 100, 0.915, 0.990),
                                          (1, 1, 0.207, 1.0)])
def test_agreement_interval_is_wilsons(k, n, lo, hi):
    from deploykit.parity import wilson_interval

    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-3) and got[1] == pytest.approx(hi, abs=1e-3)


def test_metrics_carry_their_sample_size():
    from deploykit.parity import compare_logits

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 10))
    cand = ref.copy()
    cand[:4] = -cand[:4]  # four images flip their top-1
    m = compare_logits(ref, cand)
    assert m["n"] == 40 and m["top1_agreement"] == pytest.approx(0.9)
    lo, hi = m["top1_agreement_ci95"]
    assert lo < 0.9 < hi and hi - lo > 0.15  # 40 images cannot pin 0.9 down to the second decimal
    assert m["cosine_min"] <= m["cosine_mean"] <= 1.0


# -- the parity math on its edge cases --------------------------------------------------------------------------

def test_identical_logits_pass_every_precision():
    ref = _logits(3.0, n=16)
    for precision in Precision:
        assert judge(compare_logits(ref, ref.copy()), tolerance_for(precision)) == [], precision


def test_nan_or_inf_in_the_candidate_fails_and_never_agrees_by_accident():
    ref = _logits(3.0, n=6)
    for bad in (np.nan, np.inf, -np.inf):
        cand = ref.copy()
        cand[2, :] = bad  # a whole row: argsort alone would still name some class as its top-1
        m = compare_logits(ref, cand)
        assert m["max_abs_diff"] == float("inf") and m["cosine_min"] == 0.0
        assert m["top1_agreement"] == pytest.approx(5 / 6) and m["top5_agreement"] <= 5 / 6
        assert any(f.startswith("max_abs_diff") for f in judge(m, tolerance_for(Precision.FP32)))
        assert any(f.startswith("cosine_min") for f in judge(m, tolerance_for(Precision.FP16)))
        assert any(f.startswith("top1_agreement") for f in judge(m, tolerance_for(Precision.INT8)))  # 0.83 < 0.97
    all_bad = np.full_like(ref, np.nan)
    assert compare_logits(ref, all_bad)["top1_agreement"] == 0.0


def test_nan_in_the_reference_fails_the_fp32_gate():
    ref = _logits(3.0, n=4)
    ref[1, 3] = np.nan
    m = compare_logits(ref, _logits(3.0, n=4))
    assert judge(m, tolerance_for(Precision.FP32))
    assert degenerate_reference(ref) is not None


def test_zero_norm_rows():
    ref = np.zeros((3, 5))
    ref[0] = [1, 2, 3, 4, 5]
    same = ref.copy()
    m = compare_logits(ref, same)
    assert m["cosine_min"] == 1.0 and m["cosine_mean"] == 1.0  # zero against zero is the same output
    other = ref.copy()
    other[1] = [0, 0, 1e-3, 0, 0]  # zero against non-zero: nothing in common
    m = compare_logits(ref, other)
    assert m["cosine_min"] == 0.0 and m["cosine_mean"] == pytest.approx(2 / 3)


def test_shape_mismatch_is_a_user_error():
    from deploykit.errors import InputError

    with pytest.raises(InputError, match="shapes differ"):
        compare_logits(np.zeros((2, 10)), np.zeros((2, 11)))


def test_fewer_than_five_classes_and_one_image():
    ref = np.array([[0.1, 0.9]])
    m = compare_logits(ref, np.array([[0.9, 0.1]]))
    assert m["n"] == 1 and m["top1_agreement"] == 0.0 and m["top5_agreement"] == 1.0  # k = 2 classes: same set
    lo, hi = m["top1_agreement_ci95"]
    assert lo == 0.0 and 0.7 < hi < 0.85  # one image says almost nothing (Wilson: [0, 0.79])


def test_wilson_interval_edges():
    from deploykit.parity import wilson_interval

    assert wilson_interval(0, 0) == [0.0, 1.0]
    lo, hi = wilson_interval(200, 200)
    assert hi == 1.0 and 0.98 < lo < 0.99  # all 200 agree: at least ~98.1% with 95% confidence
    lo, hi = wilson_interval(14, 21)
    assert lo < 0.67 < hi and hi - lo > 0.35  # the 14 of 21: an interval ~0.4 wide


def test_accuracy_and_its_interval_come_with_labels():
    from deploykit.parity import assess

    ref = np.eye(4)[[0, 1, 2, 3, 0, 1]] * 5
    cand = ref.copy()
    cand[5] = np.eye(4)[2] * 5
    report = assess("m.onnx", "int8", ref, cand, labels=np.array([0, 1, 2, 3, 0, 1]))
    m = report.metrics
    assert m["reference_accuracy"] == 100.0 and m["accuracy"] == pytest.approx(500 / 6)
    assert m["accuracy_drop"] == pytest.approx(100 / 6) and not report.passed
    assert m["accuracy_ci95"][0] < m["accuracy"] < m["accuracy_ci95"][1] <= 100.0
    assert any("accuracy_drop" in f for f in report.failures) and any("top1_agreement" in f for f in report.failures)


def test_known_logits_are_used_only_for_the_same_images(lenet_ckpt, tmp_path):
    """Export hands verification the logits its precision stage already computed; they count only when the
    images (their digest) and the runtime are the same."""
    from deploykit.data import verification_set
    from deploykit.manifest import Manifest
    from deploykit.parity import batch_digest
    from deploykit.pipeline import export_folder
    from deploykit.verify import KnownLogits, verify_folder

    folder = export_folder(lenet_ckpt, out=tmp_path / "exp", verify=False).folder
    batch = verification_set("digits").load(Manifest.load(folder).preprocessing)
    wrong = np.zeros((len(batch), 10), np.float32)
    wrong[:, 3] = 1.0  # every image "class 3": fails against the PyTorch reference
    used = verify_folder(folder, data="digits", known=KnownLogits(batch_digest(batch), {"model.onnx": wrong}))
    assert not used.passed  # the known logits were judged
    ignored = verify_folder(folder, data="digits", known=KnownLogits(batch_digest(batch[:-1]), {"model.onnx": wrong}))
    assert ignored.passed and ignored.artifacts[0].metrics["cosine_min"] > 0.99999  # other images: run again


def test_the_reference_runs_channels_last_and_falls_back_for_nchw_only_code():
    """Verification's PyTorch reference runs in oneDNN's channels_last layout (same logits), and a module whose
    code needs NCHW (``x.view`` after a conv) runs as written instead of failing."""
    from deploykit.runners.torch import TorchRunner

    class ViewAfterConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.view(y.size(0), -1))  # fails on a channels_last tensor

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((2, 3, 8, 8), np.float32)
    for module, fast in ((ViewAfterConv().eval(), False), (torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval(), True)):
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        runner = TorchRunner(module, (3, 8, 8), channels_last=True)
        np.testing.assert_allclose(runner.infer(x), ref, rtol=1e-5, atol=1e-6)
        assert runner._channels_last is fast
        np.testing.assert_allclose(runner.infer(x), ref, rtol=1e-5, atol=1e-6)  # and again, in the layout chosen
