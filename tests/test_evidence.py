"""The evidence an export folder carries: verdicts on the model's own kind of images (held out of --calib), PyTorch's
logits recorded on them, and one verdict per file in verify, bench and report."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from _digits import digits_arrays, train_lenet, write_imagefolder


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> Path:
    images, labels = digits_arrays("train")
    path = tmp_path_factory.mktemp("lenet") / "lenet.pth"
    train_lenet(path, images[:800], labels[:800], epochs=3)
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """300 labelled digits (the train split's last ones: never trained on by the fixture above)."""
    images, labels = digits_arrays("train")
    return write_imagefolder(tmp_path_factory.mktemp("calib") / "digits", images[-300:], labels[-300:])


@pytest.fixture(scope="module")
def export(lenet, calib, tmp_path_factory) -> Path:
    """FP16, INT8 for TensorRT and for the CPU, no --data: verified on digits held out of --calib."""
    from typer.testing import CliRunner

    from deploykit.cli import app

    out = tmp_path_factory.mktemp("export") / "lenet"
    result = CliRunner().invoke(app, ["export", str(lenet), "--out", str(out), "--fp16", "--int8", "--int8-for", "trt",
                                      "--int8-for", "cpu", "--calib", str(calib), "--dynamic-batch"])
    assert result.exit_code == 0, result.output
    return out


def test_export_without_data_is_judged_on_digits_held_out_of_calibration(export, calib):
    manifest = json.loads((export / "deploykit.json").read_text())
    evidence = manifest["evidence"]
    # 300 candidates, --calib-size 512: the 20% share is held out (60), calibration keeps the other 240
    assert evidence["n_images"] == 60 and evidence["held_out"] is True and evidence["domain"] is True
    assert evidence["source"] == str(calib) and "held out of calibration" in evidence["selection"]
    int8 = next(a for a in manifest["artifacts"] if a["path"] == "model.int8.onnx")
    assert int8["details"]["calibration"]["images"] == 240
    for art in manifest["artifacts"]:
        assert art["parity"]["n_images"] == 60 and art["parity"]["held_out"] is True, art["path"]
        assert "accuracy" in art["parity"]["metrics"]  # labelled: accuracy judged too
    labels = np.load(export / "evidence-labels.npy")
    assert Counter(labels.tolist()) == Counter({c: 6 for c in range(10)})  # stratified: 6 of each of 30 per class
    images = np.load(export / "evidence-images.npy")
    assert images.dtype == np.uint8 and images.shape == (60, 28, 28, 1)
    for entry in evidence["files"].values():
        assert (export / entry["path"]).stat().st_size == entry["bytes"]


def test_held_out_rule():
    from deploykit.evidence import MIN_HELD_OUT, held_out_count

    assert held_out_count(10_000, 512, 32, 512) == 512  # plenty beyond --calib-size: calibration loses nothing
    assert held_out_count(1437, 512, 32, 512) == 512
    assert held_out_count(600, 512, 32, 512) == 120  # the 20% share beats the 88 spare
    assert held_out_count(300, 512, 32, 100) == 60  # within the cap
    assert held_out_count(300, 512, 32, 40) == 40
    assert held_out_count(99, 512, 32, 512) == 20
    assert held_out_count(90, 512, 32, 512) == 0 and MIN_HELD_OUT == 20  # 18 is too few to judge on
    assert held_out_count(100, 512, 90, 512) == 0  # holding out would leave fewer than --min-calib


def test_a_calib_too_small_to_split_is_used_and_said_so(tmp_path):
    from deploykit.data import scan_images
    from deploykit.evidence import choose_images
    from deploykit.preprocess import Preprocess

    images, labels = digits_arrays("val")
    folder = write_imagefolder(tmp_path / "small", images[:40], labels[:40])
    pre = Preprocess(1, 28, 28, (0.5,), (0.5,))
    pool = scan_images(folder)
    selection = choose_images(None, pre, calib_pool=pool, calib=folder, calib_size=512, min_calib=32)
    assert selection.held_out is False and len(selection.images) == 40 and selection.calib == pool
    assert "not held out" in selection.why and "--data" in selection.why
    photos = choose_images(None, pre)
    assert photos.domain is False and "not the model's kind of images" in photos.why


def test_a_gate_failure_on_the_photos_names_data_and_the_budget():
    from deploykit.parity import ArtifactReport, ParityReport

    failed = ArtifactReport("model.int8.onnx", "int8", {}, False, ["top1_agreement 0.9524 < 0.97"])
    report = ParityReport([failed], "pytorch", "photos", 210, data_info={"domain": False})
    summary = report.failure_summary()
    assert "not the model's kind of images" in summary and "--data" in summary and "--accuracy-budget" in summary
    own = ParityReport([failed], "pytorch", "digits", 60, data_info={"domain": True})
    assert "--accuracy-budget" not in own.failure_summary()


def test_the_evidence_cap_keeps_a_large_model_folder_small():
    from deploykit.evidence import EVIDENCE_FLOOR, image_budget, pixel_bytes
    from deploykit.preprocess import Preprocess

    pre = Preprocess(3, 224, 224, (0.5,) * 3, (0.5,) * 3, resize=256)
    resnet50 = 102_000_000
    budget = image_budget(pre, resnet50)
    assert budget <= 0.1 * resnet50 and budget // pixel_bytes(pre) >= 50
    assert image_budget(pre, 1_000_000) == EVIDENCE_FLOOR  # a small model still gets its images
    assert image_budget(pre, resnet50, {"fp16": 1, "int8": 1}) <= 0.1 * resnet50 * 1.75


def _verdicts(report: dict) -> dict[str, tuple[bool, float]]:
    return {a["path"]: (a["passed"], a["metrics"]["top1_agreement"]) for a in report["artifacts"]}


def test_verify_bench_and_report_give_each_file_one_verdict(cli, export):
    verify = json.loads(cli("verify", export, "--json").stdout)
    assert verify["reference"] == "pytorch-recorded" and verify["data"]["n_images"] == 60
    on_ort = _verdicts(verify)
    assert set(on_ort) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"}
    result = cli("bench", export, "--backends", "torch,ort,ov", "--iters", "3", "--warmup", "1", "--json")
    assert result.exit_code == 0, result.output
    bench = json.loads(result.stdout)
    ov_rows = [r for r in bench["results"] if r["backend"] == "ov" and r["variant"] == "f32"]
    if ov_rows:
        on_ov = _verdicts(json.loads(cli("verify", export, "--backend", "ov", "--json").stdout))
    for row in bench["results"]:
        if row["backend"] == "torch":
            continue
        parity = row["parity"]
        assert parity["n_images"] == 60, row
        want = on_ort if row["backend"] == "ort" else on_ov if row["variant"] == "f32" else None
        if want is not None:
            assert (parity["passed"], parity["top1_agreement"]) == want[row["artifact"]], row
    (export / "bench.json").write_text(json.dumps(bench))
    assert cli("report", export).exit_code == 0
    text = (export / "report.md").read_text()
    for path, (passed, _) in on_ort.items():  # the artifacts table: the same verdict on the same 60 images
        row = next(line for line in text.splitlines() if line.startswith(f"| `{path}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == "60" and cells[-1].startswith("pass" if passed else "FAIL"), row
    speed = [line for line in text.splitlines() if re.match(r"\| (ort|ov) \|", line)]
    assert len(speed) == len([r for r in bench["results"] if r["backend"] in ("ort", "ov")])
    for line, row in zip(speed, [r for r in bench["results"] if r["backend"] in ("ort", "ov")]):
        assert line.rstrip(" |").endswith(("pass" if row["parity"]["passed"] else "FAIL") + r" \(60 images\)"), line


def test_images_left_out_are_supplied_by_data_and_matched_by_content(cli, lenet, tmp_path):
    images, labels = digits_arrays("val")
    data = write_imagefolder(tmp_path / "private", images[:50], labels[:50])
    out = tmp_path / "private-export"
    result = cli("export", lenet, "--out", out, "--data", data, "--no-evidence-images")
    assert result.exit_code == 0, result.output
    evidence = json.loads((out / "deploykit.json").read_text())["evidence"]
    assert "images" not in evidence["files"] and not (out / "evidence-images.npy").exists()
    refused = cli("verify", out)
    assert refused.exit_code != 0 and "--no-evidence-images" in refused.output and "--data" in refused.output
    same = json.loads(cli("verify", out, "--data", data, "--json").stdout)
    assert same["reference"] == "pytorch-recorded" and same["data"]["n_images"] == 50
    other = write_imagefolder(tmp_path / "other", images[50:80], labels[50:80])
    assert json.loads(cli("verify", out, "--data", other, "--json").stdout)["reference"] == "pytorch"


def test_recheck_reference_runs_pytorch_against_its_record(cli, export):
    report = json.loads(cli("verify", export, "--recheck-reference", "--json").stdout)
    assert report["reference"] == "pytorch-recorded"
    check = report["reference_check"]
    assert check["passed"] is True and check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-3
