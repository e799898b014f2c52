"""deploykit bench: the JSON contract, skips with reasons, the plot and the markdown report, the timing loop and
the RSS window. Real tiny models (LeNet 1x28x28, ResNet-18 at 32x32), real ONNX Runtime and PyTorch, few
iterations; no assertion on how fast anything is."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from deploykit.bench import (Backend, BenchOptions, Capabilities, Case, Device, Latency, Prepared, Variant,
                             bench_folder, measure, plan_cases, probe, time_loop)
from deploykit.errors import MissingDependencyError
from deploykit.manifest import Manifest
from deploykit.parity import Precision
from deploykit.messages import Recorder

FAST = ("--iters", "3", "--warmup", "1")


def _checkpoint(folder: Path, arch: str, num_classes: int, size: int | None = None) -> Path:
    import torch

    from deploykit.models import build_model, get_spec
    from deploykit.models.loading import save_checkpoint
    from deploykit.preprocess import Preprocess

    torch.manual_seed(0)
    spec = get_spec(arch)
    pre = spec.preprocess()
    if size is not None:
        pre = Preprocess(channels=pre.channels, height=size, width=size, mean=pre.mean, std=pre.std, resize=None)
    path = folder / f"{arch}.pt"
    save_checkpoint(path, build_model(arch, num_classes=num_classes), arch=arch, num_classes=num_classes,
                    preprocess=pre)
    return path


@pytest.fixture(scope="session")
def lenet_ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("lenet"), "lenet", 10)


@pytest.fixture(scope="session")
def lenet_folder(lenet_ckpt, tmp_path_factory) -> Path:
    """A LeNet export folder with a dynamic batch and parity recorded in its manifest."""
    from deploykit.pipeline import export_folder

    return export_folder(lenet_ckpt, out=tmp_path_factory.mktemp("lenet_export") / "exp", dynamic_batch=True).folder


@pytest.fixture(scope="session")
def resnet18_fixed_folder(tmp_path_factory) -> Path:
    """ResNet-18 at 32x32, exported with the default fixed batch of 1."""
    from deploykit.pipeline import export_folder

    ckpt = _checkpoint(tmp_path_factory.mktemp("r18"), "resnet18", 7, size=32)
    return export_folder(ckpt, out=tmp_path_factory.mktemp("r18_export") / "exp").folder


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_contract(cli, lenet_folder):
    out = _json(cli("bench", lenet_folder, "--backends", "torch,ort", "--precisions", "fp32", "--batch", "1,2",
                    "--threads", "1", *FAST, "--json"))
    assert set(out) == {"host", "results"}
    host = out["host"]
    for key in ("cpu", "cores_available", "threads", "isa", "versions"):
        assert key in host
    assert host["threads"] == 1
    assert isinstance(host["isa"], list)
    assert host["versions"]["torch"] and host["versions"]["onnxruntime"]
    results = out["results"]
    assert {(r["backend"], r["batch"]) for r in results} == {("torch", 1), ("torch", 2), ("ort", 1), ("ort", 2)}
    for r in results:
        assert isinstance(r["backend"], str) and isinstance(r["precision"], str) and isinstance(r["device"], str)
        assert isinstance(r["batch"], int)
        assert set(r["latency_ms"]) == {"p50", "p90", "p99", "mean"}
        assert all(isinstance(v, float) and v > 0 for v in r["latency_ms"].values())
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert isinstance(r["throughput"], float)
        assert r["throughput"] == pytest.approx(r["batch"] * 1000 / r["latency_ms"]["p50"])  # one statistic: p50
        assert isinstance(r["speedup_vs_torch"], float)
        assert r["device"] == "cpu" and r["precision"] == "fp32" and r["iters"] == 3
        assert r["rss_peak_mb"] > 0 and 0 <= r["rss_delta_mb"] <= r["rss_peak_mb"]
    torch_rows = [r for r in results if r["backend"] == "torch"]
    assert all(r["speedup_vs_torch"] == 1.0 and r["parity"] == {"is_reference": True} for r in torch_rows)
    ort_b2 = next(r for r in results if r["backend"] == "ort" and r["batch"] == 2)
    torch_b2 = next(r for r in torch_rows if r["batch"] == 2)
    # timed in alternating rounds: the speed-up is the median of the per-round ratios, their range beside it
    assert ort_b2["rounds"] == torch_b2["rounds"] == 3 and len(ort_b2["round_p50_ms"]) == 3
    per_round = [t / o for t, o in zip(torch_b2["round_p50_ms"], ort_b2["round_p50_ms"])]
    assert ort_b2["speedup_vs_torch"] == pytest.approx(float(np.median(per_round)))
    assert ort_b2["speedup_vs_torch_range"] == pytest.approx([min(per_round), max(per_round)])
    assert isinstance(ort_b2["stable"], bool) and ort_b2["stable"] == (ort_b2["unstable"] == [])
    # the artifact's parity from the manifest sits beside its speed
    recorded = Manifest.load(lenet_folder).artifact("model.onnx")["parity"]
    assert ort_b2["artifact"] == "model.onnx"
    assert ort_b2["parity"]["passed"] is True
    assert ort_b2["parity"]["top1_agreement"] == recorded["metrics"]["top1_agreement"]


def test_skips_say_why(cli, lenet_folder):
    out = _json(cli("bench", lenet_folder, *FAST, "--json"))  # every backend and precision: the defaults
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in out["host"]["skipped"]}
    assert "GPU" in reasons[("trt", None)]  # on CPU, TensorRT is skipped as a whole
    for precision, flag in (("fp16", "--fp16"), ("int8", "--int8"), ("int8-cpu", "--int8-for cpu")):
        assert f"no {precision} ONNX artifact" in reasons[("ort", precision)]
        assert flag in reasons[("ort", precision)]
    assert "CUDA" in reasons[("torch", "fp16")]
    assert {(r["backend"], r["precision"]) for r in out["results"]
            if r["backend"] != "ov"} == {("torch", "fp32"), ("ort", "fp32")}  # ov rows: tests/test_openvino.py


@pytest.fixture(scope="session")
def lenet_all_precisions(lenet_ckpt, tmp_path_factory) -> Path:
    """LeNet exported with every ONNX precision (INT8 calibrated on 64 real digits)."""
    import sys

    from typer.testing import CliRunner

    from deploykit.cli import app

    sys.path.insert(0, str(Path(__file__).parent))
    from _digits import digits_arrays, write_imagefolder

    root = tmp_path_factory.mktemp("lenet_all")
    images, labels = digits_arrays()
    calib = write_imagefolder(root / "calib", images[:64], labels[:64])
    out = root / "exp"
    result = CliRunner().invoke(app, ["export", str(lenet_ckpt), "--out", str(out), "--dynamic-batch", "--fp16",
                                      "--int8", "--int8-for", "trt", "--int8-for", "cpu", "--calib", str(calib)])
    assert result.exit_code == 0, result.output
    return out


def test_every_onnx_precision_is_benched_with_its_parity(cli, lenet_all_precisions):
    out = _json(cli("bench", lenet_all_precisions, "--backends", "ort", *FAST, "--json"))
    rows = {r["precision"]: r for r in out["results"]}
    assert set(rows) == {"fp32", "fp16", "int8", "int8-cpu"}
    manifest = Manifest.load(lenet_all_precisions)
    for precision, row in rows.items():
        entry = next(a for a in manifest.artifacts if a["precision"] == precision)
        assert row["artifact"] == entry["path"]
        assert row["parity"]["cosine_min"] == entry["parity"]["metrics"]["cosine_min"]
        assert row["parity"]["passed"] == entry["parity"]["passed"]
    assert "FP16 kernels" in rows["fp16"]["note"]  # ORT CPU on an FP16 graph: said to be unrepresentative
    assert "TensorRT" in rows["int8"]["note"]
    assert rows["fp32"]["note"] is None and rows["int8-cpu"]["note"] is None
    assert not [s for s in out["host"]["skipped"] if s["backend"] == "ort"]


def test_fixed_batch_artifact_skips_other_batches(cli, resnet18_fixed_folder):
    out = _json(cli("bench", resnet18_fixed_folder, "--backends", "torch,ort", "--precisions", "fp32",
                    "--batch", "1,2", *FAST, "--json"))
    assert {(r["backend"], r["batch"]) for r in out["results"]} == {("torch", 1), ("torch", 2), ("ort", 1)}
    skip = next(s for s in out["host"]["skipped"] if s["backend"] == "ort")
    assert skip["batch"] == 2 and "fixed batch of 1" in skip["reason"] and "--dynamic-batch" in skip["reason"]
    assert out["host"]["target"]["input"] == [1, 3, 32, 32]


def test_plot_and_markdown(cli, lenet_folder, tmp_path):
    from PIL import Image

    png, md = tmp_path / "bench.png", tmp_path / "report" / "bench.md"
    result = cli("bench", lenet_folder, "--backends", "torch,ort", "--precisions", "fp32", "--batch", "1,4",
                 *FAST, "--plot", png, "--md", md)
    assert result.exit_code == 0, result.output
    assert "ort" in result.stdout and "skipped" not in result.stdout  # nothing requested was unavailable
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.size[0] > 800 and image.size[1] > 400
    text = md.read_text()
    assert "| backend | precision | variant |" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| torch ") or line.startswith("| ort ")]
    assert len(table_rows) == 4  # two backends x two batch sizes
    assert "host:" in text and "threads" in text
    assert not list(tmp_path.glob("**/.*.tmp"))  # atomic writes leave no temporaries


def test_log_axis_labels_are_numbers_not_raw_mathtext():
    """Plot labels are drawn with mathtext off (a class name must not be parsed); the log latency axis must then
    still read as numbers, not "$\\mathdefault{10^{-1}}$"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploykit.bench.output import log_axis
    from deploykit.text import plain_plot_text

    @plain_plot_text
    def labels() -> list[str]:
        fig, ax = plt.subplots()
        try:
            ax.barh([0, 1], [0.016, 0.13])
            log_axis(ax.xaxis)
            ax.set_xlim(0.01, 0.5)
            fig.canvas.draw()
            return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        finally:
            plt.close(fig)

    shown = labels()
    assert {"0.01", "0.02", "0.05", "0.1", "0.2", "0.5"} <= set(shown)
    assert not [t for t in shown if "$" in t or "mathdefault" in t], shown


def test_model_file_is_exported_on_the_fly(cli, lenet_ckpt):
    out = _json(cli("bench", lenet_ckpt, "--backends", "ort", "--precisions", "fp32", *FAST, "--json"))
    assert [(r["backend"], r["precision"]) for r in out["results"]] == [("ort", "fp32")]
    assert out["results"][0]["speedup_vs_torch"] is None  # no PyTorch row was asked for
    assert out["results"][0]["parity"]["passed"] is True  # verified during the on-the-fly export
    target = out["host"]["target"]
    assert target["exported"] == "on the fly" and target["arch"] == "lenet"
    assert not Path(target["folder"]).exists()  # the temporary export folder is gone


@pytest.mark.slow
def test_default_model_needs_no_target(cli):
    out = _json(cli("bench", "--backends", "ort", "--precisions", "fp32", "--iters", "2", "--warmup", "0",
                    "--json"))
    assert out["host"]["target"]["arch"] == "resnet18"
    assert "default model" in out["host"]["target"]["source"]
    assert out["results"][0]["batch"] == 1


@pytest.mark.parametrize("args, message", [
    (("--iters", "0"), "--iters must be >= 1"),
    (("--iters", "3", "--seconds", "1"), "not both"),
    (("--backends", "torch,tflite"), "unknown 'tflite'"),
    (("--precisions", "fp8"), "unknown 'fp8'"),
    (("--batch", "1,x"), "comma-separated integers"),
    (("--batch", "0"), "--batch sizes must be >= 1"),
    (("--threads", "0"), "--threads must be >= 1"),
])
def test_bad_options_are_one_line(cli, lenet_folder, args, message):
    result = cli("bench", lenet_folder, *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_bad_targets(cli, tmp_path):
    result = cli("bench", tmp_path / "missing.pt")
    assert result.exit_code == 1 and "not found" in result.output
    result = cli("bench", tmp_path)
    assert result.exit_code == 1 and "not an export folder" in result.output


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None and
                    __import__("torch").cuda.is_available(), reason="this host has a CUDA GPU")
def test_cuda_without_gpu_says_so(cli, lenet_folder):
    result = cli("bench", lenet_folder, "--device", "cuda", *FAST)
    assert result.exit_code == 3 and "no CUDA GPU" in result.output


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_on_cuda_without_tensorrt_is_skipped_with_reason(lenet_folder):
    options = BenchOptions(backends=(Backend.trt,), device=Device.cuda)
    cases, skips = plan_cases(lenet_folder, Manifest.load(lenet_folder), options,
                              probe(options.backends, options.device))
    assert cases == [] and len(skips) == 1
    assert "TensorRT is not installed" in skips[0].reason and "deploykit[trt]" in skips[0].reason


# A host as the planners see it; each test states the one it plans for instead of probing this machine.
CPU_HOST = Capabilities(torch=True, onnxruntime=True)
CUDA_HOST = Capabilities(torch=True, torch_cuda=True, onnxruntime=True, ort_cuda=True, cuda=True)


def test_torch_variants_planned_per_device(lenet_folder):
    manifest = Manifest.load(lenet_folder)
    for device, expected in ((Device.cpu, {(Precision.FP32, Variant.eager), (Precision.FP32, Variant.channels_last),
                                           (Precision.FP32, Variant.compiled)}),
                             (Device.cuda, {(Precision.FP32, Variant.eager), (Precision.FP32, Variant.compiled),
                                            (Precision.FP16, Variant.channels_last_autocast)})):
        cases, _ = plan_cases(lenet_folder, manifest, BenchOptions(backends=(Backend.torch,), device=device,
                                                                   torch_variants=True), CUDA_HOST)
        assert {(c.precision, c.variant) for c in cases} == expected


def test_pytorch_without_cuda_is_skipped_on_cuda(lenet_folder):
    from deploykit.bench.host import TORCH_NO_CUDA

    cases, skips = plan_cases(lenet_folder, Manifest.load(lenet_folder),
                              BenchOptions(backends=(Backend.torch,), device=Device.cuda),
                              Capabilities(torch=True, cuda=True))  # a GPU, but a CPU-only PyTorch
    assert cases == [] and [(s.backend, s.reason) for s in skips] == [(Backend.torch, TORCH_NO_CUDA)]
    assert "torch.cuda.is_available() is False" in TORCH_NO_CUDA


def test_every_backend_planned_from_the_capabilities_alone(lenet_folder):
    """Nothing installed, as the planners see it: one skip per backend, each saying what is missing."""
    options = BenchOptions(backends=tuple(Backend), precisions=(Precision.FP32,))
    cases, skips = plan_cases(lenet_folder, Manifest.load(lenet_folder), options, Capabilities())
    reasons = {s.backend: s.reason for s in skips}
    assert cases == [] and set(reasons) == set(Backend)
    assert reasons[Backend.torch] == "PyTorch is not installed"
    assert "pip install onnxruntime" in reasons[Backend.ort]
    assert "OpenVINO is not installed" in reasons[Backend.ov]
    assert reasons[Backend.trt].startswith("no NVIDIA GPU here") and "deploykit build" in reasons[Backend.trt]
    _, skips = plan_cases(lenet_folder, Manifest.load(lenet_folder), BenchOptions(backends=(Backend.trt,)),
                          Capabilities(cuda=True))
    assert [s.reason for s in skips] == ["TensorRT runs on NVIDIA GPUs: add --device cuda"]


def test_ort_without_its_cuda_provider_is_skipped_on_cuda(lenet_folder):
    options = BenchOptions(backends=(Backend.ort,), precisions=(Precision.FP32,), device=Device.cuda)
    cases, skips = plan_cases(lenet_folder, Manifest.load(lenet_folder), options, CPU_HOST)
    assert cases == [] and "onnxruntime-gpu" in skips[0].reason
    cases, skips = plan_cases(lenet_folder, Manifest.load(lenet_folder), options, CUDA_HOST)
    assert [(c.backend, c.precision) for c in cases] == [(Backend.ort, Precision.FP32)] and skips == []


def test_probe_asks_only_what_a_plan_can_read():
    caps = probe((Backend.ort,), Device.cpu)
    assert caps.onnxruntime and not caps.ort_cuda  # the CUDA provider is not a question on the CPU
    assert not caps.openvino and not caps.trt and caps.trt_missing == "not probed"
    with pytest.raises(MissingDependencyError, match="--device cuda: no CUDA GPU"):
        Capabilities(cuda=False, cuda_missing="no GPU").require_cuda()


def test_channels_last_variant_runs_on_cpu(lenet_folder):
    options = BenchOptions(backends=(Backend.torch,), precisions=(Precision.FP32,), iters=2, warmup=1,
                           torch_variants=True)
    cases, _ = plan_cases(lenet_folder, Manifest.load(lenet_folder), options, CPU_HOST)
    case = next(c for c in cases if c.variant is Variant.channels_last)
    m = measure(case, np.zeros((1, 1, 28, 28), np.float32), options)
    assert m.variant is Variant.channels_last and m.batch == 1 and m.iters == 2 and m.latency.p50 > 0


def test_time_loop_counts_warmup_and_iterations():
    calls = []
    samples = time_loop(lambda: calls.append(1), warmup=3, iters=7, seconds=None)
    assert len(calls) == 10 and samples.shape == (7,) and (samples >= 0).all()
    calls.clear()
    samples = time_loop(lambda: calls.append(1), warmup=0, iters=None, seconds=0.05)
    assert len(samples) == len(calls) >= 1
    assert time_loop(lambda: None, warmup=0, iters=None, seconds=None).shape == (100,)  # the default count


def test_latency_percentiles():
    lat = Latency.of(np.arange(1, 101, dtype=float))
    assert (lat.p50, lat.p90, lat.p99, lat.mean) == pytest.approx((50.5, 90.1, 99.01, 50.5))


def test_rss_delta_sees_what_a_case_allocates():
    """A case that holds 200 MiB while it runs reports about that much on top of the idle process."""
    held = []

    def prepare(batch):
        held.append(np.ones(200 * 2**20 // 8))  # touched pages: resident
        return Prepared(step=lambda: float(held[0][0]), clock=lambda step: (step(), 0.001)[1], clock_name="test",
                        close=held.clear)

    case = Case(Backend.ort, Precision.FP32, Variant.session, 1, prepare)
    m = measure(case, np.zeros((1, 1), np.float32), BenchOptions(iters=2, warmup=0))
    assert 190 <= m.rss_delta_mb <= 260
    assert m.rss_peak_mb >= m.rss_delta_mb
    assert held == []  # closed after measuring


def test_bench_folder_restores_torch_threads(lenet_folder):
    import torch

    before = torch.get_num_threads()
    report = bench_folder(lenet_folder, BenchOptions(backends=(Backend.torch,), precisions=(Precision.FP32,),
                                                     threads=1, iters=2, warmup=0))
    assert report.host["threads"] == 1 and len(report.results) == 1
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------------- one artifact file


def test_one_artifact_file_is_benched_beside_pytorch(cli, lenet_all_precisions):
    out = _json(cli("bench", lenet_all_precisions / "model.fp16.onnx", "--backends", "torch,ort", *FAST, "--json"))
    rows = {(r["backend"], r["precision"]): r for r in out["results"]}
    assert set(rows) == {("torch", "fp32"), ("ort", "fp16")}  # that artifact only, beside the reference
    assert all(isinstance(r["speedup_vs_torch"], float) for r in out["results"])
    assert rows[("ort", "fp16")]["artifact"] == "model.fp16.onnx"
    assert out["host"]["target"]["artifact"] == "model.fp16.onnx"
    assert out["host"]["skipped"] == []  # nothing asked for was unavailable: no noise about other precisions


def test_bare_onnx_uses_its_metadata(cli, lenet_folder, tmp_path):
    import shutil

    bare = tmp_path / "lenet.onnx"
    shutil.copy(lenet_folder / "model.onnx", bare)  # no deploykit.json beside it
    out = _json(cli("bench", bare, *FAST, "--json"))
    assert [(r["backend"], r["precision"], r["batch"]) for r in out["results"]
            if r["backend"] != "ov"] == [("ort", "fp32", 1)]  # ov rows: tests/test_openvino.py
    assert out["results"][0]["speedup_vs_torch"] is None  # no PyTorch source is known: no reference row
    torch_skip = next(s for s in out["host"]["skipped"] if s["backend"] == "torch")
    assert "no deploykit.json beside the ONNX file" in torch_skip["reason"]
    assert out["host"]["target"]["input"] == [None, 1, 28, 28]


@pytest.mark.parametrize("name, args, message", [
    ("model.fp32.engine", (), "needs the deploykit.json of its export folder beside it"),
    ("model.onnx", ("--backends", "torch,trt"), "model.onnx runs on ort, which --backends leaves out"),
    ("model.onnx", ("--precisions", "fp16"), "model.onnx is fp32, which --precisions leaves out"),
])
def test_artifact_file_errors_are_one_line(cli, lenet_folder, tmp_path, name, args, message):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(lenet_folder, folder)
    if name.endswith(".engine"):
        (folder / "deploykit.json").unlink()
        (folder / name).write_bytes(b"plan")
    result = cli("bench", folder / name, *args, *FAST)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------ TensorRT rows skipped one by one


def _with_engines(folder: Path, tmp_path: Path, engines: dict[str, dict]) -> Path:
    """A copy of an export folder listing fake engine files with the given manifest facts."""
    import shutil

    from deploykit.files import sha256_file

    copy = tmp_path / "with_engines"
    shutil.copytree(folder, copy)
    manifest = Manifest.load(copy)
    for name, facts in engines.items():
        (copy / name).write_bytes(b"plan")
        manifest.set_artifact({"path": name, "precision": facts["precision"], "sha256": sha256_file(copy / name),
                               "parity": None, "engine": facts})
    manifest.save(copy)
    return copy


def _facts(precision: str, tensorrt: str = "10.3.0.30", lo: int = 1, hi: int = 8) -> dict:
    return {"tensorrt": tensorrt, "gpu": "Orin", "compute_capability": "8.7", "precision": precision,
            "profile": {"input": "input", "min": [lo, 1, 28, 28], "opt": [lo, 1, 28, 28], "max": [hi, 1, 28, 28]}}


def _orin() -> Capabilities:
    """A Jetson Orin with TensorRT 10.3, as the planner sees it."""
    from deploykit.tensorrt.host import Host

    return Capabilities(cuda=True, trt=True, trt_host=Host("10.3.0.30", "Orin", "8.7"))


def test_trt_cases_that_cannot_run_are_skipped_one_by_one(lenet_folder, tmp_path):
    folder = _with_engines(lenet_folder, tmp_path, {"model.fp32.engine": _facts("fp32"),
                                                    "model.fp16.engine": _facts("fp16", tensorrt="10.0.1")})
    options = BenchOptions(backends=(Backend.trt,), precisions=(Precision.FP32, Precision.FP16), batches=(1, 16),
                           device=Device.cuda)
    cases, skips = plan_cases(folder, Manifest.load(folder), options, _orin())
    assert {(c.precision, c.batch, c.variant) for c in cases} == {(Precision.FP32, 1, Variant.end_to_end),
                                                                  (Precision.FP32, 1, Variant.compute)}
    reasons = {(s.precision, s.batch): s.reason for s in skips}
    assert "profile takes batches 1 to 8" in reasons[(Precision.FP32, 16)]
    assert "built by TensorRT 10.0.1" in reasons[(Precision.FP16, None)]
    assert "deploykit build" in reasons[(Precision.FP16, None)]


def test_trt_without_cuda_python_is_skipped_with_the_reason(lenet_folder, tmp_path, monkeypatch):
    """The probe's sentence (TensorRT importable, cuda-python missing) is the skip reason, word for word."""
    import functools
    import sys
    import types

    from deploykit.tensorrt import host

    fake = types.ModuleType("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)  # bindings present ...
    monkeypatch.setattr(host, "probe_host", functools.partial(host.probe_host, load_tensorrt=lambda: fake,
                                                              load_cudart=lambda: None))  # ... cuda-python not
    caps = probe((Backend.trt,), Device.cuda)
    assert not caps.trt and "cuda-python" in caps.trt_missing and "deploykit[trt]" in caps.trt_missing
    folder = _with_engines(lenet_folder, tmp_path, {"model.fp32.engine": _facts("fp32")})
    cases, skips = plan_cases(folder, Manifest.load(folder), BenchOptions(backends=(Backend.trt,), device=Device.cuda),
                              caps)
    assert cases == [] and [s.reason for s in skips] == [caps.trt_missing]


def test_a_case_failing_with_a_user_error_is_skipped_and_the_run_goes_on(lenet_folder, monkeypatch):
    from deploykit.bench import run
    from deploykit.errors import EngineMismatchError

    def refused(batch):
        raise EngineMismatchError("TensorRT 10.3.0 cannot load model.fp16.engine on Orin: rebuild it here")

    ok = Case(Backend.ort, Precision.FP32, Variant.session, 1,
              lambda batch: Prepared(step=lambda: None, clock=lambda step: (step(), 0.5)[1], clock_name="test"))
    bad = [Case(Backend.trt, Precision.FP16, v, 1, refused) for v in (Variant.end_to_end, Variant.compute)]
    monkeypatch.setattr(run, "plan_cases", lambda folder, manifest, options, caps, **_: ([*bad, ok], []))
    recorder = Recorder()
    report = bench_folder(lenet_folder, BenchOptions(iters=2, warmup=0), reporter=recorder, caps=CPU_HOST)
    assert [(m.backend, m.precision) for m in report.results] == [(Backend.ort, Precision.FP32)]
    assert [(s.backend, s.precision, s.batch, s.reason) for s in report.skipped] == [
        (Backend.trt, Precision.FP16, 1, "TensorRT 10.3.0 cannot load model.fp16.engine on Orin: rebuild it here")]
    assert report.results[0].speedup_vs_torch is None  # no PyTorch row: null, as documented
    task, = recorder.tasks  # progress through the reporter: one bar, every load (3) and timing round (2) counted
    assert (task.description, task.completed, task.total) == ("bench done", 5, 5)


# -- issue 25: rounds, ratios within a round, unstable rows ------------------------------------------------------


def _row(backend, batch, rounds, samples=None, precision=Precision.FP32):
    """A measurement with given per-round p50s (ms); its pooled latency from ``samples`` (default: the rounds)."""
    from deploykit.bench import Measurement

    variant = Variant.eager if backend is Backend.torch else Variant.session
    lat = Latency.of(np.array(samples if samples is not None else rounds, dtype=float))
    return Measurement(backend, precision, Device.cpu, batch, variant, lat, len(rounds), "perf_counter",
                       round_p50=[float(r) for r in rounds])


def test_one_busy_round_moves_no_ratio_and_disagreeing_rounds_mark_a_row():
    from deploykit.bench.results import add_speedups

    # PyTorch met a busy second in round 3 (64 ms instead of 0.2): per-round ratios, then the median
    torch_b1 = _row(Backend.torch, 1, [0.22, 0.21, 64.0, 0.22, 0.23])
    ort_b1 = _row(Backend.ort, 1, [0.025, 0.024, 0.026, 0.025, 0.026])
    add_speedups([torch_b1, ort_b1])
    assert ort_b1.speedup_vs_torch == pytest.approx(0.22 / 0.025, rel=0.05)  # not 64 / 0.025 = 2560x
    assert ort_b1.speedup_range[1] == pytest.approx(64.0 / 0.026)  # the busy round is in the range, shown
    assert ort_b1.stable and torch_b1.stable  # one outlying round of five does not make a row unstable
    # rounds that disagree throughout: unstable, and the cell shows the range, not a speed-up
    flaky = _row(Backend.ort, 1, [0.025, 0.05, 0.012, 0.1, 0.025])
    add_speedups([torch_b1, flaky])
    assert not flaky.stable and "rounds disagree" in flaky.unstable[0]
    from deploykit.bench import ratio_cell

    cell = ratio_cell(flaky.speedup_vs_torch, flaky.speedup_range, flaky.stable)
    assert cell.startswith("unstable (") and f"{flaky.speedup_vs_torch:.2f}x" not in cell
    assert flaky.to_json()["stable"] is False and flaky.to_json()["unstable"] == flaky.unstable


def test_p50_above_mean_and_batch_1_slower_than_batch_32_are_unstable():
    from deploykit.bench.results import add_speedups

    # issue 25's demo: torch batch 1 p50 63.96 ms (mean 53.21) against batch 32's 6.19 ms
    slow_b1 = _row(Backend.torch, 1, [64.0] * 5, samples=[64.0] * 6 + [0.2] * 4)
    torch_b32 = _row(Backend.torch, 32, [6.19] * 5)
    ort_b1 = _row(Backend.ort, 1, [0.036] * 5)
    add_speedups([slow_b1, torch_b32, ort_b1])
    assert any("above its mean" in r for r in slow_b1.unstable)
    assert any("above batch 32's" in r for r in slow_b1.unstable)
    assert torch_b32.stable
    # the ORT row's own rounds agree, but its speed-up is taken against an unstable row: not a result either
    assert ort_b1.unstable == ["its PyTorch FP32 row is unstable"]


def test_rounds_alternate_and_split_the_iterations():
    """Every loaded case runs in every round, the order reversed every other round; --iters is split exactly."""
    from deploykit.bench import measure_cases

    calls = []

    def case(name):
        def prepare(batch):
            return Prepared(step=lambda: calls.append(name), clock=lambda step: (step(), 1.0)[1], clock_name="test")
        return Case(Backend.ort, Precision.FP32, Variant.session, 1, prepare, artifact=name)

    results, failed = measure_cases([case("a"), case("b")], np.zeros((1, 1), np.float32),
                                    BenchOptions(iters=7, warmup=0))
    assert failed == [] and [m.iters for m in results] == [7, 7] and [len(m.round_p50) for m in results] == [5, 5]
    # 7 = 2+2+1+1+1 timed calls per round, each after one untimed call; a then b, then b then a, ...
    expect = []
    for r, n in enumerate((2, 2, 1, 1, 1)):
        for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
            expect += [name] * (n + 1)
    assert calls == expect


def test_contention_warning_reaches_the_markdown_and_drops_advice_already_taken(tmp_path):
    from deploykit.bench import BenchReport, write_markdown
    from deploykit.bench.host import contention_warning

    host = {"cpu": "cpu", "cores_available": 2, "threads": 2, "isa": [], "load_avg_1m": 3.5,
            "versions": {"torch": "x", "onnxruntime": "y"}}
    assert "--threads 1" in contention_warning(host)
    assert "--threads 1" not in contention_warning({**host, "threads": 1})
    assert contention_warning({**host, "load_avg_1m": 0.5}) is None
    report = BenchReport(host, [_row(Backend.torch, 1, [1.0] * 3), _row(Backend.ort, 1, [0.5] * 3)], [],
                         {"arch": "lenet"})
    from deploykit.bench.results import add_speedups

    add_speedups(report.results)
    text = write_markdown(report, tmp_path / "b.md").read_text()
    assert "this host was busy" in text and "2.00x" in text


def test_report_flags_a_bench_json_older_than_the_artifacts(cli, lenet_folder, tmp_path):
    import os
    import shutil

    folder = tmp_path / "exp"
    shutil.copytree(lenet_folder, folder)
    bench = _json(cli("bench", folder, "--backends", "torch,ort", "--precisions", "fp32", *FAST, "--json"))
    (folder / "bench.json").write_text(json.dumps(bench))
    assert cli("report", folder).exit_code == 0
    assert "Out of date" not in (folder / "report.md").read_text()
    old = (folder / "model.onnx").stat().st_mtime - 3600  # a bench from an hour before this export
    os.utime(folder / "bench.json", (old, old))
    result = cli("report", folder)
    assert result.exit_code == 0 and "older than model.onnx" in result.output
    assert "**Out of date:** bench.json" in (folder / "report.md").read_text()
    # `bench DIR` without --json leaves that file: it says where the results went
    result = cli("bench", folder, "--backends", "ort", "--precisions", "fp32", *FAST)
    assert result.exit_code == 0 and "was left as it was" in result.output


def test_ship_line_states_the_ratio_in_the_tables_direction():
    """"ship this ... 0.213x ORT FP32" was a latency ratio under a table of speed-ups: now a speed multiple (ORT
    FP32's latency / this one's per round, median of rounds), > 1 for the faster file, as the `vs torch` column."""
    from deploykit.bench import BenchReport, ship_lines
    from deploykit.bench.results import add_speedups

    ort32 = _row(Backend.ort, 1, [40.0, 42.0, 39.0])
    int8 = _row(Backend.ort, 1, [12.7, 13.3, 12.1], precision=Precision.INT8_CPU)
    int8.artifact, int8.parity, int8.ship = "model.int8-cpu.onnx", {"passed": True, "top1_agreement": 0.99}, True
    add_speedups([ort32, int8])
    line, = ship_lines(BenchReport({}, [ort32, int8], [], {}))
    expect = float(np.median([40.0 / 12.7, 42.0 / 13.3, 39.0 / 12.1]))
    assert f", {expect:.2f}x (" in line and "the speed of ORT FP32" in line  # 3.15x, not 0.317x


def test_keep_results_keeps_bench_json_only_beside_the_export_bench_chose(tmp_path):
    """bench.run.keep_results, the one place that decides: bare `deploykit bench` (chosen) with results writes
    bench.json (and sends the plot to bench.png) beside the export; a folder named on the command line keeps its
    bench.json, named as the earlier one; nothing measured, nothing written."""
    from deploykit.bench import BenchReport
    from deploykit.bench.run import keep_results

    measured = BenchReport({"cpu": "x"}, [_row(Backend.ort, 1, [1.0, 1.1])], [], {})
    kept = keep_results(measured, tmp_path, chosen=True)
    assert kept.json == tmp_path / "bench.json" and kept.plot == tmp_path / "bench.png" and kept.earlier is None
    assert json.loads(kept.json.read_text()) == json.loads(json.dumps(measured.to_json()))
    assert keep_results(measured, tmp_path, chosen=True, plot=tmp_path / "p.png").plot == tmp_path / "p.png"
    (tmp_path / "bench.json").write_text("{}")
    named = keep_results(measured, tmp_path, chosen=False, plot=None)
    assert (named.json, named.plot, named.earlier) == (None, None, tmp_path / "bench.json")
    assert (tmp_path / "bench.json").read_text() == "{}"  # left as it was
    empty = keep_results(BenchReport({}, [], [], {}), tmp_path, chosen=True)
    assert empty.json is None and (tmp_path / "bench.json").read_text() == "{}"
    assert keep_results(measured, None, chosen=True).json is None  # the bundled model: no folder to keep it in
