"""Issue 13, "the first hour": what a new user trips over, each checked as the user meets it.

Tiny real models (a LeNet and a ResNet-18 at 32x32, seeded weights) and the bundled digits; no mocks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from deploykit.manifest import MANIFEST_NAME

DIGITS = [str(i) for i in range(10)]


def _checkpoint(path: Path, arch: str, size: int, **extra) -> Path:
    from _models import make_checkpoint

    return make_checkpoint(path, arch, 10, size, class_names=DIGITS, **extra)


def _run(*args):
    from deploykit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def lenet_export(tmp_path_factory) -> Path:
    """A LeNet export folder (FP32 + INT8 for TensorRT, calibrated on digits), made through the CLI."""
    root = tmp_path_factory.mktemp("lenet")
    ckpt = _checkpoint(root / "lenet.pth", "lenet", 28)
    out = root / "exports" / "lenet"
    result = _run("export", ckpt, "--out", out, "--int8", "--calib", "digits", "--calib-size", "32", "--data",
                  "digits")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory) -> Path:
    """A few real digits as PNGs in class folders named 0..9."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digit_images")
    digits = load_digits()
    for i in range(30):
        folder = root / str(digits.target[i])
        folder.mkdir(exist_ok=True)
        Image.fromarray((digits.images[i] / 16 * 255).astype(np.uint8), "L").save(folder / f"{i:03d}.png")
    return root


# -- item 2: bare `deploykit bench` benches your latest export ------------------------------------------------


def test_default_target_is_the_latest_export(tmp_path):
    from deploykit.bench import default_target

    target, said = default_target(tmp_path / "exports")
    assert target is None and "bundled resnet18" in said and "no export folder" in said
    for name in ("old", "new"):
        (tmp_path / "exports" / name).mkdir(parents=True)
        (tmp_path / "exports" / name / MANIFEST_NAME).write_text("{}")
        time.sleep(0.01)
    (tmp_path / "exports" / "not-an-export").mkdir()
    os.utime(tmp_path / "exports" / "old" / MANIFEST_NAME, ns=(1, 1))  # written long ago
    target, said = default_target(tmp_path / "exports")
    assert target == tmp_path / "exports" / "new" and said.startswith(f"benchmarking {target}")


def test_bare_bench_says_which_export_first(cli, lenet_export):
    import shutil

    shutil.copytree(lenet_export, "exports/lenet")
    result = cli("bench", "--backends", "ort", "--precisions", "fp32", "--iters", "3", "--warmup", "0")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("benchmarking exports/lenet: the most recently written export folder"), first
    saved = json.loads(Path("exports/lenet/bench.json").read_text())  # kept for `deploykit report`
    # the data, not where rich would wrap it: the host line is one soft-wrapped line whatever the CPU's name
    from deploykit.bench import host_line

    assert saved["host"]["denormals"] == "flush-to-zero"
    assert f"host: {host_line(saved['host'])}" in result.output.splitlines()
    assert [r["backend"] for r in saved["results"]] == ["ort"] and Path("exports/lenet/bench.png").is_file()
    assert cli("report", "exports/lenet").exit_code == 0
    report = Path("exports/lenet/report.md").read_text()
    assert "| ort | fp32 |" in report and "![bench](bench.png)" in report


# -- item 4: one denormal policy, one statistic -----------------------------------------------------------------


def test_every_backend_flushes_denormals(lenet_export):
    from deploykit.bench import ORT_DENORMAL_CONFIG, BenchOptions, Device, bench_folder, host_line
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(lenet_export / "model.onnx", session_config=ORT_DENORMAL_CONFIG)
    assert runner.session.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
    report = bench_folder(lenet_export, BenchOptions(device=Device.cpu, iters=2, warmup=0))
    assert report.host["denormals"] == "flush-to-zero" and "denormals flushed to zero" in host_line(report.host)
    # torch's flag is restored once the bench is over: a library call leaves the process as it found it
    assert torch.tensor([1e-40], dtype=torch.float32).item() != 0.0
    for m in report.results:
        assert m.throughput == pytest.approx(m.batch * 1000 / m.latency.p50)


# -- item 5: a plot a user can read ---------------------------------------------------------------------------


def _measurement(backend, precision, batch, p50, p99):
    from deploykit.bench import Device, Latency, Measurement, Variant

    variant = Variant.eager if backend.value == "torch" else Variant.session
    return Measurement(backend, precision, Device.cpu, batch, variant, Latency(p50, p50 * 1.1, p99, p50 * 1.2), 10,
                       "perf_counter")


def test_plot_panels_and_title(tmp_path):
    from deploykit.bench import Backend, BenchReport, write_plot
    from deploykit.parity import Precision

    host = {"cpu": "cpu", "cores_available": 2, "threads": 2, "isa": [], "denormals": "flush-to-zero",
            "versions": {"torch": "x", "onnxruntime": "y"}}
    one = [_measurement(Backend.torch, Precision.FP32, 1, 5.0, 900.0),  # one p99 outlier
           _measurement(Backend.ort, Precision.FP32, 1, 0.8, 1.0)]
    report = BenchReport(host, one, [], {"arch": "resnet18", "source": "exports/flowers", "input": [1, 3, 32, 32]})
    single = Image.open(write_plot(report, tmp_path / "one.png"))
    report.results = one + [_measurement(Backend.torch, Precision.FP32, 8, 30.0, 40.0),
                            _measurement(Backend.ort, Precision.FP32, 8, 4.0, 5.0)]
    double = Image.open(write_plot(report, tmp_path / "two.png"))
    assert single.width < 1000 < double.width  # the throughput panel only with more than one batch size

    import matplotlib.pyplot as plt

    from deploykit.bench import model_title

    assert model_title(report) == "resnet18 (flowers)"
    plt.close("all")


# -- item 6: advice that fits the host ----------------------------------------------------------------------------


def test_trt_skip_advice_fits_the_host(tmp_path):
    from deploykit.bench import Backend, probe
    from deploykit.bench.plan import trt_on_cpu_advice

    gpu = probe((Backend.trt,)).cuda
    advice = trt_on_cpu_advice(tmp_path / "exports" / "m", gpu=gpu)
    if gpu:
        assert "--device cuda" in advice
    else:
        assert advice.startswith("no NVIDIA GPU here") and "deploykit build" in advice
        assert "use --device cuda" not in advice


# -- item 3: calibration follows what training did --------------------------------------------------------------


def test_colour_model_trained_on_digits_calibrates_on_digits(cli, tmp_path):
    ckpt = _checkpoint(tmp_path / "best.pth", "resnet18", 32, train_args={"data": "digits"})  # older record
    result = cli("export", ckpt, "--out", "exports/colour", "--int8-for", "cpu", "--calib", "digits",
                 "--calib-size", "32", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "converted to RGB, as training did" in result.output
    assert "verification skipped (--no-verify)" in result.output  # item 8
    assert (tmp_path / "exports/colour/model.int8-cpu.onnx").is_file()  # --int8-for implied --int8


def test_own_grayscale_folder_warns_and_the_flag_accepts(digit_images):
    from deploykit.data import scan_images
    from deploykit.precision.calibrate import check_channels
    from deploykit.train import trained_on_grayscale

    from deploykit.messages import Recorder

    images = scan_images(digit_images)
    seen = Recorder()
    assert check_channels(images, 3, digit_images, reporter=seen) is None
    assert len(seen.of("warn")) == 1 and "--calib-grayscale" in seen.of("warn")[0]
    accepted = check_channels(images, 3, digit_images, accepted="--calib-grayscale says", reporter=seen)
    assert "converted to RGB" in accepted and len(seen.of("warn")) == 1
    assert check_channels(images, 1, digit_images, reporter=seen) is None and len(seen.of("warn")) == 1
    assert trained_on_grayscale({"grayscale_to_rgb": True})
    assert not trained_on_grayscale({"grayscale_to_rgb": False, "train_args": {"data": "digits"}})
    assert trained_on_grayscale({"preprocess": {"channels": 3}, "train_args": {"data": "digits"}})
    assert not trained_on_grayscale({"preprocess": {"channels": 1}, "train_args": {"data": "digits"}})


def test_calib_grayscale_needs_int8(cli):
    result = cli("export", "missing.pth", "--calib-grayscale")
    assert result.exit_code == 1 and "--calib-grayscale applies only with --int8" in result.output


# -- item 8: help and flags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "verify", "predict", "eval", "bench", "build", "train", "report",
                                     "data", "models"])
def test_help_reads_like_the_readme(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "{" not in result.output.splitlines()[1]


def test_export_help_shows_defaults_and_digits(cli):
    text = " ".join(cli("export", "--help").output.replace("│", " ").split())
    assert "export [OPTIONS] MODEL" in text
    assert "[default: exports/<model stem>/]" in text
    assert "[default: with --int8, images of --calib held out of calibration; else the bundled photos]" in text
    assert "or digits" in text


def test_version(cli):
    from deploykit import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"deploykit {__version__}"


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_and_eval_take_the_loading_flags(cli, command):
    text = cli(command, "--help").output
    for flag in ("--labels", "--num-classes", "--mean", "--std"):
        assert flag in text, flag


def test_build_dynamic_batch_as_the_readme_says(cli, lenet_export):
    bare = cli("build", lenet_export, "--dynamic-batch")
    assert bare.exit_code == 1 and "MIN:OPT:MAX" in bare.output
    ranged = cli("build", lenet_export, "--dynamic-batch", "1:8:32")  # parsed: the folder's fixed batch refuses
    assert ranged.exit_code in (1, 3) and "No such option" not in ranged.output, ranged.output
    twice = cli("build", lenet_export, "--dynamic-batch", "1:8:32", "--profile", "1:4:8")
    assert twice.exit_code == 1 and "once" in twice.output


# -- item 9: predict a folder --------------------------------------------------------------------------------------


def test_predict_a_folder(cli, lenet_export, digit_images):
    result = cli("predict", lenet_export, digit_images, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    images = [p["image"] for p in out["predictions"]]
    assert len(images) == 30 and images == sorted(images)
    assert out["artifact"].endswith("model.onnx (fp32, ONNX Runtime CPU)")
    table = cli("predict", lenet_export, digit_images)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].startswith("30 image(s) through ") and "model.onnx" in lines[0]
    assert "top-1" in table.output and "prob" in table.output and "000.png" in table.output
    missing = cli("predict", lenet_export, "nothere")
    assert missing.exit_code == 1 and "image not found: nothere" in missing.output


# -- item 10: labels ----------------------------------------------------------------------------------------------


def test_verify_with_foreign_class_folders_checks_parity(cli, lenet_export, tmp_path, digit_images):
    import shutil

    for name, digit in (("cat", "0"), ("dog", "1")):
        shutil.copytree(digit_images / digit, tmp_path / "pets" / name)
    result = cli("verify", lenet_export, "--data", tmp_path / "pets", "--json")
    assert result.exit_code == 0, result.output
    assert "accuracy skipped, parity only" in result.output
    refused = cli("eval", lenet_export, "--data", tmp_path / "pets")
    assert refused.exit_code == 1 and "does not know: cat, dog" in refused.output and "--labels" in refused.output
    mapped = cli("eval", lenet_export, "--data", digit_images, "--plot", tmp_path / "c.png")
    assert mapped.exit_code == 0, mapped.output
    assert "mapped by name" in mapped.output and "recall" in mapped.output


def test_class_mapping_without_names():
    from deploykit.errors import InputError
    from deploykit.evaluate import map_classes

    index, how = map_classes(["0", "2", "10"], None, 11)
    assert index == [0, 2, 10] and "by number" in how
    index, how = map_classes(["cat", "dog"], None, 5)
    assert index == [0, 1] and "sorted order" in how and "cat->0" in how
    with pytest.raises(InputError, match="3 class folders but the model has 2 outputs"):
        map_classes(["a", "b", "c"], None, 2)


# -- item 11: progress in a log -------------------------------------------------------------------------------------


def test_plain_progress_lines():
    import io

    from deploykit.cli.progress import PlainProgress

    stream = io.StringIO()
    bar = PlainProgress(stream, interval=3600)
    task = bar.add_task("epoch 1/2", total=4, loss=float("nan"))
    for _ in range(4):
        bar.update(task, advance=1, loss=0.5)
    bar.update(task, description="next case", completed=0, total=None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "epoch 1/2: 0/4" in lines[0] and "4/4" in lines[1] and "loss 0.5" in lines[1]
    assert "next case" in lines[2]


def test_train_log_has_progress_lines(cli, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_PROGRESS_SECONDS", "0")
    result = cli("train", "lenet", "--data", "digits", "--epochs", "1", "--threads", "1")
    assert result.exit_code == 0, result.output
    progress = [line for line in result.output.splitlines() if "epoch 1/1: " in line]
    assert len(progress) >= 2, result.output  # a line at the start, more as it goes


# -- item 12: report ----------------------------------------------------------------------------------------------


def test_report_says_where_speed_comes_from_and_carries_facts(cli, lenet_export, tmp_path):
    import shutil

    folder = tmp_path / "exp"
    shutil.copytree(lenet_export, folder)
    (folder / "bench.json").unlink(missing_ok=True)
    text = (folder / "report.md").read_text() if cli("report", folder).exit_code == 0 else ""
    assert f"deploykit bench {folder} --json > {folder / 'bench.json'}" in text
    assert "calibrated on 32 images (mse)" in text  # the default method
    bench = {"host": {}, "results": [{"backend": "ort", "precision": "int8", "device": "cpu", "batch": 1,
                                      "latency_ms": {"p50": 1.0, "p99": 2.0}, "throughput": 1000.0,
                                      "speedup_vs_torch": 2.0, "note": "Q/DQ graph made for TensorRT"}]}
    (folder / "bench.json").write_text(json.dumps(bench))
    Image.new("RGB", (4, 4)).save(folder / "bench.png")
    printed = cli("report", folder, "--print")
    assert printed.exit_code == 0, printed.output
    text = (folder / "report.md").read_text()
    assert "- ort int8: Q/DQ graph made for TensorRT" in text and "Not measured yet" not in text
    assert "\N{CITYSCAPE AT DUSK}" not in printed.output and "figure (bench): bench.png" in printed.output


def test_report_mentions_accuracy_only_with_an_accuracy_column(tmp_path):
    from deploykit.manifest import Manifest
    from deploykit.report_page import render_report

    (tmp_path / "model.onnx").write_bytes(b"a graph")
    from deploykit.files import sha256_file

    manifest = Manifest(source={"path": "m.pth"}, model={"arch": "lenet", "num_classes": 2},
                        input={"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"},
                        output={"name": "logits", "shape": [1, 2], "dtype": "float32"},
                        preprocess={"channels": 1, "height": 28, "width": 28, "mean": [0.5], "std": [0.5]}, opset=18,
                        artifacts=[{"path": "model.onnx", "precision": "fp32", "sha256": sha256_file(
                            tmp_path / "model.onnx"), "parity": {"passed": True, "metrics": {"max_abs_diff": 0.0}}}])
    manifest.save(tmp_path)
    assert "accuracy in percent" not in render_report(tmp_path)


def test_version_keeps_the_apps_own_global_options():
    """Typer keeps one callback per app: --version wraps the one app.py may declare instead of replacing it."""
    from deploykit import __version__
    from deploykit.cli.command import add_version_option

    app, seen = typer.Typer(), {}

    @app.callback()
    def _global(debug: Annotated[bool, typer.Option("--debug")] = False) -> None:
        seen["debug"] = debug

    @app.command()
    def hello() -> None:
        print("hello")

    @app.command()
    def bye() -> None:
        print("bye")

    add_version_option(app)
    runner = CliRunner()
    result = runner.invoke(app, ["--debug", "hello"])
    assert result.exit_code == 0 and result.output.strip() == "hello" and seen == {"debug": True}
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"deploykit {__version__}"


# -- item 1: export folders named after the model, never silently replaced by another one ---------------------
@pytest.mark.parametrize("path, arch, expected", [
    ("runs/resnet18/best.pth", "resnet18", "resnet18"),
    ("demo/run/best.pth", "lenet", "lenet"),  # generic stem and generic run folder: the architecture
    ("resnet34.pth", "resnet34", "resnet34"),
    ("checkpoints/last.pt", None, "last"),  # nothing better known: the stem, as before
])
def test_default_export_folder_is_named_after_the_model(path, arch, expected):
    from deploykit.pipeline import default_out

    assert default_out(Path(path), arch) == Path("exports") / expected


def test_two_runs_do_not_collide_and_another_model_needs_force(cli, tmp_path):
    for run in ("a", "b"):
        (tmp_path / "runs" / run).mkdir(parents=True)
    _checkpoint(tmp_path / "runs" / "a" / "best.pth", "lenet", 28)
    torch.manual_seed(1)
    _checkpoint(tmp_path / "runs" / "b" / "best.pth", "lenet", 28, note="another run")
    first = cli("export", tmp_path / "runs" / "a" / "best.pth", "--no-verify")
    assert first.exit_code == 0 and Path("exports/a/model.onnx").is_file(), first.output
    second = cli("export", tmp_path / "runs" / "b" / "best.pth", "--no-verify")
    assert second.exit_code == 0 and Path("exports/b/model.onnx").is_file(), second.output
    into_a = cli("export", tmp_path / "runs" / "b" / "best.pth", "--out", "exports/a", "--no-verify")
    assert into_a.exit_code == 1 and "--force" in into_a.output and "--out" in into_a.output
    assert json.loads(Path("exports/a/deploykit.json").read_text())["source"]["name"] == "best.pth"
    same = cli("export", tmp_path / "runs" / "a" / "best.pth", "--no-verify")  # the same source: replaced
    assert same.exit_code == 0, same.output
    forced = cli("export", tmp_path / "runs" / "b" / "best.pth", "--out", "exports/a", "--force", "--no-verify")
    assert forced.exit_code == 0, forced.output
