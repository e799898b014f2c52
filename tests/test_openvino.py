"""OpenVINO: the runner (explicit precision, integer kernels on the Q/DQ file, cache), verify/predict --backend ov,
bench's ov rows (verified as they ran, "ship this"), and examples/openvino (torch-free, deploykit's preprocessing).

Real OpenVINO on a real exported ResNet-18 (5 classes, 3x32x32, calibrated on the repository's photos); skipped
with the reason where OpenVINO is not installed, except the tests of what happens without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import InputError, MissingDependencyError
from deploykit.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "openvino" / "classify.py"
needs_ov = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                              reason="OpenVINO is not installed (pip install 'deploykit[openvino]')")


@pytest.fixture(scope="module")
def export(tmp_path_factory, resnet18_sd):
    """ResNet-18 (3x32x32, 5 classes): model.onnx, model.int8.onnx (Q/DQ for TensorRT), model.int8-cpu.onnx."""
    from deploykit.models.loading import LoadOptions
    from deploykit.pipeline import export_folder
    from deploykit.precision import CalibMethod, Int8Target, PrecisionRequest

    out = tmp_path_factory.mktemp("ov") / "export"
    req = PrecisionRequest(int8=True, int8_for=(Int8Target.trt, Int8Target.cpu), calib=ROOT / "calib",
                           calib_method=CalibMethod.entropy)
    export_folder(resnet18_sd, out=out, options=LoadOptions(arch="resnet18", input_shape=(3, 32, 32)), precision=req,
                  verify=True)
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Compiled models go to a per-test cache folder, never the user's."""
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "dk-cache"))


@pytest.fixture(scope="module")
def photos_batch(export):
    from deploykit.data import sample_images
    from deploykit.manifest import Manifest

    return sample_images().load(Manifest.load(export).preprocessing)


def _tiny_onnx(path: Path, scale: float) -> Path:
    """Conv -> global average pool -> logits, weights all ``scale``: outputs scale with it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 3, 3, 3), scale, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    tmp = path.with_suffix(".tmp")
    onnx.save(model, tmp)
    os.replace(tmp, path)  # as deploykit writes: a new file renamed into place
    return path


# -- runner ----------------------------------------------------------------------------------------------------
@needs_ov
def test_fp32_runs_in_f32_and_matches_onnxruntime(export, photos_batch):
    from deploykit.runners.onnxrt import OnnxRuntimeRunner
    from deploykit.runners.openvino import OpenVINORunner

    runner = OpenVINORunner(export / "model.onnx", threads=2)
    assert runner.inference_precision == "f32"  # asked for explicitly, read back from the compiled model
    assert set(runner.layer_precisions) == {"f32"}
    ov_logits = runner.infer(photos_batch)
    ort_logits = OnnxRuntimeRunner(export / "model.onnx", threads=2).infer(photos_batch)
    np.testing.assert_allclose(ov_logits, ort_logits, rtol=1e-4, atol=1e-4)


@needs_ov
def test_qdq_int8_runs_with_integer_kernels_and_agrees_with_onnxruntime(export, photos_batch):
    from deploykit.runners.onnxrt import OnnxRuntimeRunner
    from deploykit.runners.openvino import OpenVINORunner
    from deploykit.parity import compare_logits

    runner = OpenVINORunner(export / "model.int8.onnx", threads=2)
    layers = runner.layer_precisions
    assert set(layers) <= {"u8", "i8"} and sum(layers.values()) == 21  # 20 convolutions + the fc layer, all INT8
    assert runner.precision_text == "int8 + f32"
    ov_logits = runner.infer(photos_batch)
    ort_logits = OnnxRuntimeRunner(export / "model.int8.onnx").infer(photos_batch)
    assert compare_logits(ort_logits, ov_logits)["top1_agreement"] >= 0.95


@needs_ov
def test_bf16_is_asked_for_and_judged_as_bf16(export, photos_batch):
    from deploykit.runners.openvino import OpenVINORunner, native_bf16
    from deploykit.parity import compare_logits, judge, tolerance_for

    if not native_bf16():
        with pytest.raises(MissingDependencyError, match="no native bf16"):
            OpenVINORunner(export / "model.onnx", inference_precision="bf16").activate()
        return
    runner = OpenVINORunner(export / "model.onnx", inference_precision="bf16", threads=2)
    assert runner.inference_precision == "bf16" and set(runner.layer_precisions) == {"bf16"}
    f32 = OpenVINORunner(export / "model.onnx", threads=2).infer(photos_batch)
    bf16 = runner.infer(photos_batch)
    metrics = compare_logits(f32, bf16)
    assert metrics["max_abs_diff"] > 0  # really another precision
    assert judge(metrics, tolerance_for("bf16")) == []
    assert judge(metrics, tolerance_for("fp32"))  # and not within FP32's tolerance: it needs its own row


@needs_ov
def test_onnxruntime_cpu_graph_is_a_one_line_error(export):
    from deploykit.runners.openvino import OpenVINORunner

    with pytest.raises(InputError) as exc:
        OpenVINORunner(export / "model.int8-cpu.onnx").activate()
    assert "cannot read model.int8-cpu.onnx" in str(exc.value) and "model.int8.onnx" in str(exc.value)
    assert "\n" not in str(exc.value)


@needs_ov
def test_compiled_model_cache_is_reused_and_never_stale(tmp_path):
    from deploykit.runners.openvino import OpenVINORunner

    path = _tiny_onnx(tmp_path / "model.onnx", 1.0)
    x = np.ones((1, 3, 8, 8), np.float32)
    first = OpenVINORunner(path, cache=tmp_path / "cache")
    assert not first.loaded_from_cache and first.cache_dir.is_relative_to(tmp_path / "cache")
    second = OpenVINORunner(path, cache=tmp_path / "cache")
    assert second.loaded_from_cache
    np.testing.assert_array_equal(first.infer(x), second.infer(x))
    # re-exported at the same path: OpenVINO alone would load the old program (it keys on the path)
    _tiny_onnx(path, 2.0)
    third = OpenVINORunner(path, cache=tmp_path / "cache")
    assert not third.loaded_from_cache
    np.testing.assert_allclose(third.infer(x), 2 * first.infer(x), rtol=1e-6)
    assert not first.cache_dir.exists()  # the old identity's blobs are removed


def test_user_cache_dir(monkeypatch, tmp_path):
    from deploykit.runners.openvino import user_cache_dir

    monkeypatch.delenv("DEPLOYKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert user_cache_dir() == tmp_path / "xdg" / "deploykit"
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert user_cache_dir() == tmp_path / "mine"


def test_without_openvino_verify_and_predict_exit_3_naming_the_extra(export, cli, monkeypatch, photos):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.setattr("deploykit.runners.openvino._CORE", None)
    result = cli("verify", export, "--backend", "ov")
    assert result.exit_code == 3, result.output
    assert "deploykit[openvino]" in result.output
    result = cli("predict", export / "model.int8.onnx", photos / "chelsea.png", "--backend", "ov")
    assert result.exit_code == 3 and "deploykit[openvino]" in result.output


# -- verify / predict ------------------------------------------------------------------------------------------
@needs_ov
def test_verify_backend_ov_reports_what_ran_and_int8_beside_onnxruntime(export, cli):
    from deploykit.runners.openvino import native_bf16

    result = cli("verify", export, "--backend", "ov", "--json")
    assert result.exit_code == 0, result.output
    arts = json.loads(result.stdout[result.stdout.index("{"):])["artifacts"]
    by = {(a["path"], a["precision"]): a for a in arts}
    expected = {("model.onnx", "fp32"), ("model.int8.onnx", "int8")} | ({("model.onnx", "bf16")} if native_bf16()
                                                                        else set())
    assert set(by) == expected  # model.int8-cpu.onnx: OpenVINO cannot read it (warned, not silently passed)
    assert all(a["backend"] == "ov" for a in arts)
    assert by[("model.onnx", "fp32")]["inference_precision"] == "f32"
    int8 = by[("model.int8.onnx", "int8")]
    assert set(int8["layer_precisions"]) <= {"u8", "i8"}
    assert int8["ort"]["top1_agreement_with_ov"] >= 0.95 and "metrics" in int8["ort"]
    if native_bf16():
        assert by[("model.onnx", "bf16")]["inference_precision"] == "bf16"
    table = cli("verify", export, "--backend", "ov")
    assert "ran on OpenVINO" in table.output and "top-1 agreement OpenVINO vs ONNX Runtime" in table.output


@needs_ov
def test_backend_that_cannot_run_the_artifact_is_a_one_line_error(export, cli, photos):
    result = cli("verify", export / "model.int8.onnx", "--backend", "trt")
    assert result.exit_code == 1 and "TensorRT runs engines" in result.output
    result = cli("verify", export / "model.int8-cpu.onnx", "--backend", "ov")
    assert result.exit_code == 1 and "cannot read model.int8-cpu.onnx" in result.output
    assert "Traceback" not in result.output


@needs_ov
def test_predict_backend_ov_matches_onnxruntime(export, cli, photos):
    images = [photos / "chelsea.png", photos / "astronaut.jpg"]
    ov = cli("predict", export / "model.onnx", *images, "--backend", "ov", "--json")
    ort = cli("predict", export / "model.onnx", *images, "--json")
    assert ov.exit_code == 0 and ort.exit_code == 0, ov.output
    top = lambda out: [p["top"][0]["index"] for p in json.loads(out[out.index("{"):])["predictions"]]  # noqa: E731
    assert top(ov.stdout) == top(ort.stdout)


# -- bench -----------------------------------------------------------------------------------------------------
@needs_ov
def test_bench_ov_rows_carry_the_parity_of_what_ran_and_name_what_to_ship(export, tmp_path):
    from deploykit.bench import Backend, BenchOptions, bench_folder, default_backends, ship_lines, write_markdown
    from deploykit.runners.openvino import native_bf16
    from deploykit.parity import Precision

    assert Backend.ov in default_backends()
    options = BenchOptions(backends=(Backend.ort, Backend.ov), threads=1, warmup=1, iters=3)
    report = bench_folder(export, options)
    ov = {(m.precision, m.variant.value): m for m in report.results if m.backend is Backend.ov}
    expected = {(Precision.FP32, "f32"), (Precision.INT8, "f32")}
    if native_bf16():
        expected |= {(Precision.BF16, "bf16"), (Precision.INT8, "bf16")}
    assert set(ov) == expected
    for (precision, variant), m in ov.items():
        assert m.ran["inference_precision"] == variant
        assert m.parity["verified"].startswith(f"this run (openvino {variant}")  # not the manifest's ORT parity
        assert m.parity["passed"] is True
    assert set(ov[(Precision.INT8, "f32")].ran["layer_precisions"]) <= {"u8", "i8"}
    skipped = {(s.backend, s.precision): s.reason for s in report.skipped}
    assert "cannot read model.int8-cpu.onnx" in skipped[(Backend.ov, Precision.INT8_CPU)]
    assert (Backend.ort, Precision.BF16) not in skipped  # bf16 is an ov row, not an ORT gap
    ship = [m for m in report.results if m.ship]
    assert sorted(m.backend.value for m in ship) == ["ort", "ov"]
    for m in ship:  # the fastest of the rows that passed
        peers = [r for r in report.results if r.backend is m.backend and (r.parity or {}).get("passed")]
        assert m.latency.p50 == min(r.latency.p50 for r in peers)
    lines = ship_lines(report)
    assert len(lines) == 2 and all(line.startswith("ship this on ") for line in lines)
    assert report.to_json()["host"]["versions"]["openvino"]
    md = write_markdown(report, tmp_path / "bench.md").read_text()
    assert "Ship this" in md and "| ov | int8 | f32 |" in md


@needs_ov
def test_bench_bf16_without_ov_says_where_it_runs(export):
    from deploykit.bench import Backend, BenchOptions, bench_folder
    from deploykit.parity import Precision

    report = bench_folder(export, BenchOptions(backends=(Backend.ort,), precisions=(Precision.BF16,), iters=1,
                                               warmup=0))
    assert not report.results
    assert "add ov to --backends" in report.skipped[0].reason


# -- examples/openvino -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("openvino_classify", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pre", [Preprocess(1, 28, 28, (0.5,), (0.5,)),
                                 Preprocess(3, 224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize=256),
                                 Preprocess(3, 64, 64, (0.5,) * 3, (0.5,) * 3, resize=73, interpolation="bicubic")],
                         ids=lambda p: f"{p.channels}x{p.height}x{p.width}-{p.interpolation}")
def test_example_preprocesses_like_deploykit(example, pre, photos):
    for image in sorted(p for p in photos.iterdir() if p.suffix != ".txt"):
        np.testing.assert_array_equal(example.preprocess(image, pre.to_dict()), pre.load(image), err_msg=image.name)


def test_example_never_runs_another_model_than_asked(example, tmp_path):
    manifest = {"artifacts": [{"path": "model.onnx", "precision": "fp32"},
                              {"path": "model.int8-cpu.onnx", "precision": "int8-cpu"},
                              {"path": "model.int8.onnx", "precision": "int8"}]}
    assert example.select_model(manifest, None, tmp_path)["path"] == "model.int8.onnx"  # the Intel deployable
    assert example.select_model(manifest, "model.onnx", tmp_path)["path"] == "model.onnx"
    with pytest.raises(SystemExit, match="lists no ONNX model 'model.fp16.onnx'"):
        example.select_model(manifest, "model.fp16.onnx", tmp_path)
    with pytest.raises(SystemExit, match="OpenVINO cannot read"):
        example.select_model(manifest, "model.int8-cpu.onnx", tmp_path)


@needs_ov
def test_example_runs_without_torch_or_deploykit_and_agrees_with_predict(export, cli, photos, tmp_path):
    images = [photos / "chelsea.png", photos / "coffee_rgba.png"]
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['deploykit'] = None; "
            f"sys.argv = ['classify.py', *sys.argv[1:]]; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(export), *map(str, images), "--topk", "3", "--threads", "1",
                           "--cache", str(tmp_path / "c")], capture_output=True, text=True, env={
                               k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert "(model.int8.onnx, int8, OpenVINO f32)" in proc.stdout
    first = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("1. ")]
    ours = cli("predict", export / "model.int8.onnx", *images, "--backend", "ov", "--json")
    assert first == [p["top"][0]["label"] for p in json.loads(ours.stdout[ours.stdout.index("{"):])["predictions"]]
