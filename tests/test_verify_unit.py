"""deploykit.verify piece by piece, on the small export folder in tests/data (LeNet: FP32, FP16, INT8 for TensorRT
and for ONNX Runtime CPU, with its evidence: PyTorch's logits recorded at export) and on logits built here: the
comparison, the logits an earlier stage hands over, the choice of reference, the record in the manifest, the
extra runs of --backend ov, the FP16 diagnostic and the refusals. The CLI end to end is in test_cli.py,
test_openvino.py and test_trt.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deploykit import runners
from deploykit.errors import InputError
from deploykit.files import sha256_file
from deploykit.manifest import Artifact, Manifest
from deploykit.parity import ArtifactReport, ParityReport, batch_digest
from deploykit.messages import Recorder
from deploykit.runners.base import Backend
from deploykit.verify import (RECORDED, FixedLogits, KnownLogits, Reference, compare_runners, parity_record,
                              record_parity, reference_runner, source_unusable, verification_data, verify_folder)
from deploykit.verify.openvino import LastLogits, describe_ov_runs, with_bf16
from deploykit.verify.run import for_backend, judged_artifacts

LENET = Path(__file__).resolve().parent / "data" / "lenet_export"


@pytest.fixture
def folder(tmp_path) -> Path:
    copy = tmp_path / "exp"
    shutil.copytree(LENET, copy)
    return copy


def _logits(n: int = 8, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, classes)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ compare


def test_compare_runners_judges_each_candidate_against_the_reference():
    ref = _logits()
    flipped = ref.copy()
    flipped[:, [0, 1]] = ref[:, [1, 0]] + 5.0  # another top-1 on every image
    batch = np.zeros((8, 1, 28, 28), np.float32)
    report = compare_runners(FixedLogits(ref, (1, 28, 28)),
                             [("same.onnx", "fp32", FixedLogits(ref.copy(), (1, 28, 28))),
                              ("off.onnx", "fp32", FixedLogits(flipped, (1, 28, 28)))],
                             batch, reference_name="ref", data_name="zeros")
    same, off = report.artifacts
    assert (report.reference, report.data, report.n_images) == ("ref", "zeros", 8)
    assert same.passed and same.metrics["max_abs_diff"] == 0.0 and same.metrics["top1_agreement"] == 1.0
    assert not off.passed and off.metrics["top1_agreement"] == 0.0 and off.failures
    assert not report.passed and report.reference_logits is ref


def test_compare_runners_runs_real_runners_on_the_same_batch(folder):
    manifest = Manifest.load(folder)
    batch = verification_data(manifest).batch
    with runners.open(manifest.file("model.onnx")) as ref, runners.open(manifest.file("model.onnx")) as again:
        report = compare_runners(ref, [("model.onnx", "fp32", again)], batch)
    assert report.passed and report.n_images == len(batch) and report.artifacts[0].metrics["max_abs_diff"] == 0.0


# ------------------------------------------------------------------------------------- known logits, reference


def test_the_folders_evidence_is_the_reference_without_torch(folder):
    recorder = Recorder()
    report = verify_folder(folder, reporter=recorder)
    assert (report.kind, report.reference) == ("pytorch-recorded", RECORDED)
    assert {a.path for a in report.artifacts} == {a.path for a in Manifest.load(folder).artifacts}
    assert report.passed and report.n_images == Manifest.load(folder).evidence["n_images"]
    assert any("judging on the folder's evidence" in n for n in recorder.of("note"))


def test_known_logits_stand_in_for_a_run_only_on_the_same_images_and_runtime(folder):
    manifest = Manifest.load(folder)
    batch = verification_data(manifest).batch
    wrong = np.zeros((len(batch), 10), np.float32)
    wrong[:, 3] = 1.0  # "class 3" for every image: out of tolerance
    used = verify_folder(folder, known=KnownLogits(batch_digest(batch), {"model.fp16.onnx": wrong}))
    assert [a.path for a in used.artifacts if not a.passed] == ["model.fp16.onnx"]
    other_images = verify_folder(folder, known=KnownLogits(batch_digest(batch[:-1]), {"model.fp16.onnx": wrong}))
    on_ort = verify_folder(folder, known=KnownLogits(batch_digest(batch), {"model.fp16.onnx": wrong}),
                           backend=Backend.ort)
    assert other_images.passed and on_ort.passed  # the file was run instead


def test_known_logits_still_check_the_file(folder):
    manifest = Manifest.load(folder)
    batch = verification_data(manifest).batch
    (folder / "model.fp16.onnx").write_bytes(b"changed")
    with pytest.raises(InputError, match="model.fp16.onnx"):
        verify_folder(folder, known=KnownLogits(batch_digest(batch), {"model.fp16.onnx": np.zeros((len(batch), 10))}))


def test_without_the_source_the_fp32_onnx_stands_in_and_is_not_judged_by_itself(folder):
    """Other images than the evidence (--data) need a reference run here: the source checkpoint is not here, so
    the FP32 ONNX stands in, says why, and is left out of the judged artifacts."""
    recorder = Recorder()
    report = verify_folder(folder, data="digits", max_images=16, reporter=recorder)
    assert (report.kind, report.reference, report.n_images) == ("onnx-fp32", "model.onnx", 16)
    assert "model.onnx" not in [a.path for a in report.artifacts]
    assert any("is not here: comparing against model.onnx instead of PyTorch" in w for w in recorder.of("warn"))


def test_source_unusable_says_why(folder, tmp_path):
    manifest = Manifest.load(folder)
    assert "is not here" in source_unusable(manifest)
    source = tmp_path / "best.pth"
    source.write_bytes(b"weights")
    manifest.source = {**manifest.source, "path": str(source), "sha256": sha256_file(source)}
    assert source_unusable(manifest) is None
    source.write_bytes(b"other weights")
    assert "changed since export (sha256 differs)" in source_unusable(manifest)


@pytest.mark.parametrize("kind, flag", [("torchscript", "--trust-code"), ("model-def", "--model-def")])
def test_a_source_that_is_code_needs_the_flag_on_this_command_line(folder, tmp_path, kind, flag):
    pytest.importorskip("torch")
    manifest = Manifest.load(folder)
    manifest.source = {**manifest.source, "kind": kind}
    recorder = Recorder()
    runner, name = reference_runner(folder, manifest, reporter=recorder)
    assert name == "model.onnx" and flag in runner.reason and flag in recorder.of("warn")[0]
    runner.close()


def test_no_source_and_no_fp32_onnx_is_refused(folder):
    manifest = Manifest.load(folder)
    manifest.artifacts = [a for a in manifest.artifacts if a.precision != "fp32"]
    with pytest.raises(InputError, match="no PyTorch reference .* and no FP32 ONNX"):
        reference_runner(folder, manifest)


# ------------------------------------------------------------------------------------------------- record


def test_record_parity_writes_each_listed_verdict_and_round_trips(folder):
    report = verify_folder(folder)
    report.artifacts.append(ArtifactReport("model.bf16.run", "bf16", {"top1_agreement": 1.0}, True))  # not listed
    manifest = Manifest.load(folder)
    for a in manifest.artifacts:
        manifest.update_artifact(a.path, parity=None)
    record_parity(manifest, report)
    manifest.save(folder)
    saved = json.loads((folder / "deploykit.json").read_text())
    by_path = {a["path"]: a for a in saved["artifacts"]}
    assert "model.bf16.run" not in by_path
    for art in report.artifacts[:-1]:
        parity = by_path[art.path]["parity"]
        assert set(parity) >= {"reference", "data", "n_images", "metrics", "passed", "failures", "held_out", "domain"}
        assert (parity["reference"], parity["n_images"], parity["passed"]) == (RECORDED, report.n_images, art.passed)
        assert parity == parity_record(report, art)
    assert Manifest.load(folder).artifact("model.int8.onnx").passed is True


def test_a_note_is_recorded_and_no_image_facts_without_them():
    report = ParityReport([ArtifactReport("m.onnx", "fp16", {}, False, ["off"], note="why")], "pytorch", "x", 4)
    assert parity_record(report, report.artifacts[0]) == {
        "reference": "pytorch", "data": "x", "n_images": 4, "metrics": {}, "passed": False, "failures": ["off"],
        "note": "why"}


# ------------------------------------------------------------------------------- backends and refusals


def _engine(folder: Path) -> Artifact:
    (folder / "model.fp16.engine").write_bytes(b"PLAN")
    return Artifact(path="model.fp16.engine", precision="fp16", sha256=sha256_file(folder / "model.fp16.engine"),
                    bytes=4)


def test_for_backend_keeps_what_the_backend_runs_and_refuses_the_rest(folder):
    onnx = list(Manifest.load(folder).artifacts)
    engine = _engine(folder)
    assert for_backend(onnx + [engine], Backend.trt, folder, None) == [engine]
    assert for_backend(onnx + [engine], Backend.ov, folder, None) == onnx
    with pytest.raises(InputError, match="has no TensorRT engine: `deploykit build"):
        for_backend(onnx, Backend.trt, folder, None)
    with pytest.raises(InputError, match="model.onnx cannot run on --backend trt: TensorRT runs engines"):
        for_backend(onnx[:1], Backend.trt, folder, ["model.onnx"])
    with pytest.raises(InputError, match=r"model.fp16.engine cannot run on --backend ort: an engine runs on TensorRT"):
        for_backend([engine], Backend.ort, folder, ["model.fp16.engine"])
    with pytest.raises(InputError, match="has no ONNX artifact"):
        for_backend([engine], Backend.ov, folder, None)


def test_judged_artifacts_leaves_out_the_fp32_reference_except_on_openvino(folder):
    manifest = Manifest.load(folder)
    ref = Reference(FixedLogits(np.zeros((1, 10)), (1, 28, 28)), "model.onnx", "onnx-fp32")
    assert "model.onnx" not in [a.path for a in judged_artifacts(manifest, ref)]
    assert "model.onnx" in [a.path for a in judged_artifacts(manifest, ref, backend=Backend.ov)]
    with pytest.raises(InputError, match="model.onnx is the only artifact: nothing to compare"):
        judged_artifacts(manifest, ref, only=["model.onnx"])
    manifest.artifacts = []
    with pytest.raises(InputError, match="has no ONNX artifacts or engines"):
        judged_artifacts(manifest, ref)


def test_an_engine_without_tensorrt_is_skipped_with_a_warning_unless_named(folder):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the engine would be loaded, not skipped")
    manifest = Manifest.load(folder)
    manifest.set_artifact(_engine(folder))
    manifest.save(folder)
    recorder = Recorder()
    report = verify_folder(folder, reporter=recorder)
    assert "model.fp16.engine" not in [a.path for a in report.artifacts]
    assert any(w.startswith("skipping model.fp16.engine: ") for w in recorder.of("warn"))
    with pytest.raises(InputError, match="nothing in .* can be verified on this machine"):
        verify_folder(folder, backend="trt")


# ------------------------------------------------------------------------------------------ --backend ov


def test_with_bf16_adds_the_fp32_graph_in_bf16_only_where_the_cpu_has_it():
    runs = [("model.onnx", "fp32", "f32"), ("model.int8.onnx", "int8", "f32")]
    assert with_bf16(runs, bf16=True) == runs + [("model.onnx", "bf16", "bf16")]
    assert with_bf16(runs, bf16=False) == runs
    assert with_bf16(runs[1:], bf16=True) == runs[1:]  # no FP32 graph: nothing to run in bf16


def test_describe_ov_runs_puts_the_onnxruntime_twin_under_its_openvino_entry(folder):
    pytest.importorskip("openvino")
    manifest = Manifest.load(folder)
    vdata = verification_data(manifest)
    path = manifest.file("model.int8.onnx")
    candidates = [("model.int8.onnx", "int8", LastLogits(runners.open(path, Backend.ov))),
                  ("model.int8.onnx", "int8", LastLogits(runners.open(path)))]
    report = compare_runners(FixedLogits(vdata.recorded, (1, 28, 28)), candidates, vdata.batch)
    describe_ov_runs(report, candidates)
    (entry,) = report.artifacts
    assert entry.extra["backend"] == "ov" and entry.extra["inference_precision"] == "f32"
    assert set(entry.extra["ort"]) == {"metrics", "passed", "failures", "top1_agreement_with_ov"}
    assert 0.9 <= entry.extra["ort"]["top1_agreement_with_ov"] <= 1.0
    for _, _, runner in candidates:
        runner.close()


# -------------------------------------------------------------------------------------------- FP16 diagnostic


def test_an_fp16_failure_is_explained_when_pytorch_fp16_agrees():
    torch = pytest.importorskip("torch")
    from deploykit.verify import explain_fp16_failures, fp16_stand_in_caveat

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
    batch = np.random.default_rng(0).random((6, 1, 4, 4), np.float32)
    failed = ArtifactReport("model.fp16.onnx", "fp16", {"cosine_min": 0.5}, False, ["cosine_min 0.5"])
    engine = ArtifactReport("model.fp16.engine", "fp16", {"cosine_min": 0.5}, False, ["cosine_min 0.5"])
    report = ParityReport([failed, engine], "pytorch", "x", 6)
    explain_fp16_failures(report, None, batch)
    assert failed.note is None  # no module: nothing to ask
    explain_fp16_failures(report, module, batch)
    assert failed.note.startswith("ONNX Runtime CPU cannot stand in for TensorRT") and failed.failures[-1] == failed.note
    assert engine.note is None  # an engine ran on TensorRT itself: nothing to explain
    assert fp16_stand_in_caveat(object(), batch, {"cosine_min": 0.5}) is None


# ----------------------------------------------------------------------------------------- the CLI's gates


@pytest.mark.parametrize("args, message", [
    (["--int8-agreement", "2"], "--int8-agreement must be between 0 and 1, got 2.0"),
    (["--int8-accuracy-drop", "-1"], "--int8-accuracy-drop must be between 0 and 100, got -1.0"),
    (["--int8-accuracy-drop", "101"], "--int8-accuracy-drop must be between 0 and 100, got 101.0"),
])
def test_verify_refuses_an_int8_gate_out_of_range_as_export_does(cli, folder, args, message):
    result = cli("verify", folder, *args)
    assert result.exit_code == InputError.exit_code and message in " ".join(result.output.split())


def test_verify_moves_both_int8_gates_on_both_int8_graphs(cli, folder):
    """LeNet's INT8 graphs agree with PyTorch on 99.4% (TensorRT's) and 99.7% (ONNX Runtime CPU's) of the evidence
    images and lose 0.56 and 0.28 accuracy points: each gate moved fails those beyond it, FP32/FP16 untouched."""
    def failed(*args):
        result = cli("verify", folder, "--json", *args)
        report = json.loads(result.stdout)
        assert result.exit_code == (4 if any(not a["passed"] for a in report["artifacts"]) else 0)
        return sorted(a["path"] for a in report["artifacts"] if not a["passed"])

    assert failed() == []
    assert failed("--int8-agreement", "1") == ["model.int8-cpu.onnx", "model.int8.onnx"]
    assert failed("--int8-accuracy-drop", "0.4") == ["model.int8.onnx"]
