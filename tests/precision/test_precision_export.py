"""The precision stage end to end on a trained model: parity and accuracy, the gates, the sensitivity pass and
the accuracy budget through `deploykit export`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from _precision_common import REPO_CALIB


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


@pytest.mark.parametrize("target", ["trt", "cpu"])
def test_a_gate_miss_without_a_budget_names_the_likely_layer_in_one_pass(target, digits, tmp_path, monkeypatch):
    """Issue 25: without --accuracy-budget a miss builds no graph per layer (ResNet-50: 2 x 54 of them, 375 s);
    one FP32 run with every quantized tensor as an output names the layer whose range was clipped, and the export
    says how to run the full search."""
    import deploykit.precision.variants as build
    from deploykit.pipeline import export_folder
    from deploykit.precision import Int8Target, PrecisionRequest

    _clip_calibration(monkeypatch, "classifier.3")
    probes = []
    monkeypatch.setattr(build, "rank_layers", lambda *a, **k: probes.append(1))  # the per-layer pass: not run
    req = PrecisionRequest(int8=True, int8_for=(Int8Target(target),), calib=digits["calib"], int8_agreement=0.0)
    result = export_folder(digits["ckpt"], out=tmp_path / "g", precision=req, data=digits["test"], verify=True)
    budget = result.precision.budgets[Int8Target(target)]
    assert probes == [] and budget.one_pass and budget.met is None and budget.base.loss > 1.0
    assert budget.ranking[0].layer == "classifier.3" and len(budget.ranking) == 5
    assert budget.ranking[0].activation > 10 * max(n.activation for n in budget.ranking[1:])
    assert all(0 < n.weight < 1e-3 for n in budget.ranking)  # per-channel int8 weights: small, never zero
    record = result.manifest.artifact(result.precision.int8[Int8Target(target)].path.name)["details"]["accuracy_budget"]
    assert record["sensitivity_method"].startswith("one pass") and record["sensitivity"][0]["layer"] == "classifier.3"
    assert record["sensitivity_images"] == 32 and record["kept_fp32"] == []
    assert any("classifier.3" in n and "--accuracy-budget" in n for n in result.precision.notes)


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
    # another --calib-method: its own cache replaces the old one, which would otherwise linger (issue 25)
    monkeypatch.undo()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    res = cli(*args[:-2], "percentile", "--no-verify")
    assert res.exit_code == 0, res.output
    assert [p.name.split("-")[1] for p in (tmp_path / "o").glob("calib-*.json")] == ["percentile"]
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"  # the user's files are still carried over


