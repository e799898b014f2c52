"""`pip install deploykit` -- the base install a Jetson gets, without the torch extra -- runs the device commands.

A fresh virtual environment gets this checkout installed with pip as a user would (the real dependency set of
the base install, resolved by pip; wheels come from pip's cache when it has them), torch and torchvision are
asserted absent from it, and its `deploykit` runs predict, verify (against PyTorch's recorded logits), bench, build and
report on the committed export folder tests/data/lenet_export (made by `deploykit train lenet --data digits` +
`deploykit export ... --fp16 --int8 --int8-for trt --int8-for cpu --calib digits --data digits`, as `make
demo` does; it carries its evidence: the 360 held-out digits and PyTorch's logits on them). export, train and
`eval MODEL.pth` say in one line which extra to install (exit 3).

When pip cannot install (offline, no cache) the test skips with pip's reason; .ci/run sets
DEPLOYKIT_REQUIRE_TORCHFREE=1 so that CI fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "tests" / "data" / "lenet_export"
DIGITS = ROOT / "tests" / "data" / "digits"  # 10 held-out digits per class, written by `deploykit data digits`
TORCH_EXTRA = 'pip install "deploykit[torch]"'

@pytest.fixture(scope="module")
def torchfree(tmp_path_factory) -> Path:
    """The bin/ folder of a venv holding `pip install <this checkout>` (no extras)."""
    env_dir = tmp_path_factory.mktemp("torchfree") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    started = time.perf_counter()
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        why = (pip.stderr.strip().splitlines() or ["(no output)"])[-1]
        if os.environ.get("DEPLOYKIT_REQUIRE_TORCHFREE"):
            pytest.fail(f"pip install {ROOT} failed: {pip.stderr[-2000:]}")
        pytest.skip(f"pip could not install deploykit into a fresh venv (offline, no cache?): {why}")
    print(f"\ntorch-free venv: pip install {time.perf_counter() - started:.0f} s", end=" ")
    return env_dir / "bin"


def run(bin_dir: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(COLUMNS="200", DEPLOYKIT_CACHE_DIR=str(cwd / ".cache"))
    return subprocess.run([str(bin_dir / "deploykit"), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A copy of the committed export (commands write into it: bench.json, report.md)."""
    return Path(shutil.copytree(EXPORT, tmp_path / "lenet_export"))


@pytest.mark.slow
def test_the_base_install_has_no_torch(torchfree):
    code = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
            "('torch', 'torchvision', 'onnxscript', 'sklearn', 'matplotlib', 'deploykit', 'onnxruntime', "
            "'skimage')}))")
    found = json.loads(subprocess.run([str(torchfree / "python"), "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    assert found == {"torch": False, "torchvision": False, "onnxscript": False, "sklearn": False,
                     "matplotlib": False, "deploykit": True, "onnxruntime": True, "skimage": True}
    # the installed package, not this checkout's src/ on a path
    where = subprocess.run([str(torchfree / "python"), "-c", "import deploykit; print(deploykit.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout
    assert str(torchfree.parent) in where


@pytest.mark.slow
def test_predict_is_right_on_held_out_digits(torchfree, folder, tmp_path):
    images = [sorted((DIGITS / str(d)).glob("*.png"))[0] for d in range(10)]
    started = time.perf_counter()
    result = run(torchfree, "predict", folder, *images, "--json", "--topk", "3", cwd=tmp_path)
    took = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)["predictions"]
    assert [p["top"][0]["label"] for p in got] == [str(d) for d in range(10)]
    assert all(0.5 < p["top"][0]["probability"] <= 1 for p in got)
    print(f"deploykit predict (10 images): {took:.2f} s", end=" ")


@pytest.mark.slow
def test_verify_against_pytorchs_recorded_logits(torchfree, folder, tmp_path):
    """Without torch, every file -- model.onnx too -- is judged against PyTorch's logits recorded at export, on the
    folder's evidence images (the 360 held-out digits), with the verdicts export recorded."""
    result = run(torchfree, "verify", folder, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reference"] == "pytorch-recorded" and report["data"]["n_images"] == 360
    assert [(a["path"], a["passed"]) for a in report["artifacts"]] == [
        ("model.onnx", True), ("model.fp16.onnx", True), ("model.int8.onnx", True), ("model.int8-cpu.onnx", True)]
    manifest = json.loads((folder / "deploykit.json").read_text())
    recorded = {a["path"]: a["parity"]["metrics"]["top1_agreement"] for a in manifest["artifacts"]}
    assert {a["path"]: a["metrics"]["top1_agreement"] for a in report["artifacts"]} == recorded
    result = run(torchfree, "verify", folder / "model.onnx", "--json", cwd=tmp_path)  # the FP32 file alone too
    assert result.returncode == 0 and json.loads(result.stdout)["artifacts"][0]["passed"] is True, result.stderr


@pytest.mark.slow
def test_verify_other_images_against_the_fp32_onnx(torchfree, folder, tmp_path):
    result = run(torchfree, "verify", folder, "--data", DIGITS, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "torch is not installed: comparing against model.onnx instead of PyTorch" in result.stderr
    report = json.loads(result.stdout)
    assert report["reference"] == "onnx-fp32" and report["data"]["n_images"] == 100
    assert [(a["path"], a["passed"]) for a in report["artifacts"]] == [
        ("model.fp16.onnx", True), ("model.int8.onnx", True), ("model.int8-cpu.onnx", True)]


@pytest.mark.slow
def test_tampered_evidence_is_refused(torchfree, folder, tmp_path):
    logits = folder / "evidence-logits.npy"
    data = bytearray(logits.read_bytes())
    data[-1] ^= 1  # one bit of the last logit
    logits.write_bytes(bytes(data))
    result = run(torchfree, "verify", folder, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("-> ")]  # progress lines first
    assert len(errors) == 1 and errors[0].startswith("error:") and "evidence-logits.npy" in errors[0]


@pytest.mark.slow
def test_check_runs_in_the_base_install(torchfree, folder, tmp_path):
    """`deploykit check` is a device command: onnx alone, no torch, no TensorRT; the tables ship in the package."""
    result = run(torchfree, "check", folder, "--trt", "10.3,11.5", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    verdicts = {a["path"]: a for a in json.loads(result.stdout)["artifacts"]}
    assert verdicts["model.int8.onnx"]["tensorrt_ready"]["10.3"] == {
        **verdicts["model.int8.onnx"]["tensorrt_ready"]["10.3"], "ready": True, "problems": []}
    result = run(torchfree, "check", folder / "model.int8-cpu.onnx", "--trt", "10.3", cwd=tmp_path)
    assert result.returncode == 4 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
def test_bench_build_report(torchfree, folder, tmp_path):
    result = run(torchfree, "bench", folder, "--batch", "1,8", "--iters", "5", "--warmup", "1", "--json",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bench = json.loads(result.stdout)
    assert {(r["backend"], r["precision"]) for r in bench["results"]} >= {("ort", "fp32"), ("ort", "fp16")}
    assert all(r["latency_ms"]["p50"] > 0 and r["throughput"] > 0 for r in bench["results"])
    assert any(s["backend"] == "torch" and "PyTorch is not installed" in s["reason"] for s in bench["host"]["skipped"])
    (folder / "bench.json").write_text(result.stdout)

    result = run(torchfree, "build", folder, "--precision", "fp16", cwd=tmp_path)  # no TensorRT in the base install
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert 'pip install "deploykit[trt]"' in result.stderr and f"deploykit build {folder} --precision fp16" in \
        " ".join(result.stderr.split())

    result = run(torchfree, "report", folder, "--print", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (folder / "report.md").read_text()
    assert "model.int8-cpu.onnx" in text and "ort" in text


@pytest.mark.slow
@pytest.mark.parametrize("command", [("export", "{pth}"), ("train", "lenet", "--data", "digits", "--epochs", "1"),
                                     ("eval", "{pth}", "--data", "{digits}")], ids=["export", "train", "eval"])
def test_torch_commands_name_the_extra(torchfree, tmp_path, command):
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"not read: torch is missing first")
    args = [a.format(pth=pth, digits=DIGITS) for a in command]
    result = run(torchfree, *args, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: deploykit {command[0]} needs PyTorch") and TORCH_EXTRA in line


def test_a_missing_extra_is_named():
    """The message the CLI prints (exit 3) when an optional module is missing; None for anything else (a bug)."""
    from deploykit.errors import MissingDependencyError, missing_extra

    err = missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch"), "export")
    assert isinstance(err, MissingDependencyError) and err.exit_code == 3
    assert str(err) == ('deploykit export needs PyTorch, which is not installed here: pip install "deploykit[torch]" '
                        "(on a Jetson: NVIDIA's PyTorch for JetPack)")
    broken = missing_extra(ModuleNotFoundError("No module named 'torch._C'", name="torch._C"), "export")
    assert "whose import failed here (No module named 'torch._C')" in str(broken)
    assert 'pip install "deploykit[data]"' in str(missing_extra(ModuleNotFoundError("x", name="sklearn.datasets")))
    assert 'pip install "deploykit[plot]"' in str(missing_extra(ModuleNotFoundError("x", name="matplotlib"), "bench"))
    assert missing_extra(ModuleNotFoundError("x", name="numpy")) is None
    assert missing_extra(ImportError("libcudnn.so.9: cannot open shared object file")) is None
