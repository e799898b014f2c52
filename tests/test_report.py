"""deploykit report: the export folder's one-page summary, built from what the other commands wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _digits import digits_arrays, train_lenet, write_imagefolder


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory) -> Path:
    """A LeNet trained on digits, exported with FP16 and verified with accuracy on labelled held-out digits."""
    from typer.testing import CliRunner

    from deploykit.cli import app

    root = tmp_path_factory.mktemp("report")
    images, labels = digits_arrays("train")
    train_lenet(root / "lenet.pth", images[:1000], labels[:1000], epochs=3)
    held_out, held_out_labels = digits_arrays("val")
    val = write_imagefolder(root / "val", held_out[:100], held_out_labels[:100])
    out = root / "export"
    result = CliRunner().invoke(app, ["export", str(root / "lenet.pth"), "--out", str(out), "--fp16",
                                      "--dynamic-batch", "--data", str(val)])
    assert result.exit_code == 0, result.output
    return out


def test_report_lists_every_artifact_with_the_manifest_numbers(cli, digits_export):
    result = cli("report", digits_export)
    assert result.exit_code == 0, result.output
    text = (digits_export / "report.md").read_text()
    manifest = json.loads((digits_export / "deploykit.json").read_text())
    assert text.startswith("# lenet: deploykit report")
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `model")}
    assert set(rows) == {a["path"] for a in manifest["artifacts"]} == {"model.onnx", "model.fp16.onnx"}
    for art in manifest["artifacts"]:
        m = art["parity"]["metrics"]
        cells = [c.strip() for c in rows[art["path"]].split("|")[1:-1]]
        assert cells[1] == art["precision"]
        assert cells[6] == f"{m['cosine_min']:.6f}" and cells[7] == f"{m['top1_agreement']:.3f}"
        assert cells[9] == f"{m['accuracy']:.2f}" and cells[-1] == "pass"
    ship = text.split("## Which file to ship", 1)[1].split("##", 1)[0]  # from the manifest's parity alone
    assert "| NVIDIA Jetson / GPU | TensorRT | an engine built on the device from `model.fp16.onnx`" in ship
    assert "| other CPU (ARM, AMD) | ONNX Runtime | `model.onnx` |" in ship and "Intel" not in ship  # no INT8 file
    speed = text.split("## Speed", 1)[1]  # no bench.json yet: nothing invented, the way to get it said
    assert "Not measured yet" in speed and "deploykit bench" in speed and "| backend |" not in speed


def test_report_picks_up_bench_json_and_pngs(cli, digits_export, tmp_path):
    result = cli("bench", digits_export, "--backends", "ort", "--precisions", "fp32,fp16", "--batch", "1,4",
                 "--iters", "10", "--warmup", "2", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    bench = json.loads(result.stdout.strip().splitlines()[-1])
    (digits_export / "bench.json").write_text(json.dumps(bench))
    assert cli("eval", digits_export, "--data", "digits", "--plot", digits_export / "confusion.png").exit_code == 0

    result = cli("report", digits_export, "--out", tmp_path / "r.md", "--print")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    speed = [line for line in text.splitlines() if line.startswith("| ort ")]
    assert len(speed) == len(bench["results"]) == 4
    for r in bench["results"]:
        assert any(f"| {r['precision']} |" in line and f"| {r['batch']} |" in line
                   and f"{r['latency_ms']['p50']:.3f}" in line for line in speed)
    assert "Host: " in text and "![confusion](confusion.png)" in text
    shipped = [r for r in bench["results"] if r["ship"]]
    assert len(shipped) == 2  # one per batch on the one backend
    for r in shipped:
        assert f"- ort (cpu, batch {r['batch']}): {r['artifact']} in {r['precision']}" in text
    assert "Speed" in result.output  # --print renders it on the terminal too


@pytest.mark.parametrize("make_args,message", [
    (lambda d, tmp: ["report", tmp], "not an export folder"),
    (lambda d, tmp: ["report", d, "--bench", tmp / "missing.json"], "not found"),
    (lambda d, tmp: ["report", d, "--bench", tmp / "bad.json"], "is not `deploykit bench --json` output"),
    (lambda d, tmp: ["report", d, "--bench", tmp / "rows.json"], "is not `deploykit bench --json` output"),
    (lambda d, tmp: ["report", d, "--bench", tmp], "cannot read bench results"),
])
def test_report_errors_are_one_line(cli, digits_export, tmp_path, make_args, message):
    (tmp_path / "bad.json").write_text('{"not": "bench"}')
    (tmp_path / "rows.json").write_text('{"results": [1, 2]}')
    result = cli(*make_args(digits_export, tmp_path))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_the_ship_rules_share_one_verified_test():
    """report.recommended_artifact (what to ship per device) and bench.results.fastest_verified (the fastest
    verified row) answer two questions with one "verified" test, manifest.verified: "passed": true only."""
    import numpy as np

    from deploykit.bench import Backend, Device, Latency, Measurement, Variant
    from deploykit.bench.results import fastest_verified
    from deploykit.manifest import Manifest, verified
    from deploykit.parity import Precision
    from deploykit.report_page import recommended_artifact

    assert [verified(p) for p in (None, {}, {"passed": False}, {"passed": 1}, "passed", {"passed": True})] == \
        [False] * 5 + [True]
    arts = [{"path": "model.onnx", "precision": "fp32", "sha256": "0" * 64, "parity": {"passed": True}},
            {"path": "model.int8.onnx", "precision": "int8", "sha256": "1" * 64, "parity": {"passed": 1}},
            {"path": "model.int8-cpu.onnx", "precision": "int8-cpu", "sha256": "2" * 64, "parity": {"passed": True}}]
    manifest = Manifest(source={}, model={"num_classes": 2}, input={}, output={}, preprocess={}, opset=None,
                        artifacts=arts)
    chosen = [(device, runtime, art.path) for device, runtime, art in recommended_artifact(manifest)]
    assert chosen == [("NVIDIA Jetson / GPU", "TensorRT", "model.onnx"),
                      ("other CPU (ARM, AMD)", "ONNX Runtime", "model.int8-cpu.onnx")]  # int8's 1 is not true
    bench = {"results": [{"backend": "ort", "precision": "int8-cpu", "parity": {"passed": False}}]}
    assert [a.path for _, _, a in recommended_artifact(manifest, bench)] == ["model.onnx", "model.onnx"]

    def row(p50, parity):
        return Measurement(Backend.ort, Precision.FP32, Device.cpu, 1, Variant.session,
                           Latency.of(np.array([p50])), 1, "perf_counter", parity=parity)

    rows = [row(1.0, {"passed": 1}), row(2.0, {"passed": True}), row(3.0, {"passed": True})]
    fastest_verified(rows)
    assert [r.ship for r in rows] == [False, True, False]
