"""The TensorRT layer.

Everything that needs no GPU runs everywhere: the build plan per TensorRT version (strong vs weak typing, never
both), batch profiles, the compatibility check, the timing-cache path, the out-of-memory message, and the CLI
(`export --to trt` writes and verifies the ONNX then exits 3 with the build command; `build` errors).
Tests marked ``trt`` build and run real engines; they skip with a reason where TensorRT or a CUDA GPU is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import EngineMismatchError, InputError, MissingDependencyError
from deploykit.tensorrt.build import calibration_hash
from deploykit.tensorrt.build_errors import is_out_of_memory, oom_message
from deploykit.tensorrt.plan import BuilderFlag, NetworkFlag, Typing, plan_build
from deploykit.tensorrt.host import (Host, check_compatible, default_timing_cache, missing_message, probe_host)
from deploykit.tensorrt.profile import (DEFAULT_PROFILE, BatchProfile, EnginePrecision, build_command, engine_name,
                                        resolve_profile)
from deploykit.manifest import Manifest

_PROBE = probe_host()
TRT_HERE = not isinstance(_PROBE, list)
needs_trt = pytest.mark.skipif(not TRT_HERE, reason="needs TensorRT and a CUDA GPU: "
                                                    + ("; ".join(_PROBE) if not TRT_HERE else ""))

# ------------------------------------------------------------------------------------------ build plan


@pytest.mark.parametrize("version", ["10.0.1", "10.3.0", "10.11.0.33", "10.12.0", "10.13.3.9", "11.0.0", "11.4.0.106"])
@pytest.mark.parametrize("precision", list(EnginePrecision))
def test_plan_is_strong_or_weak_never_both(version, precision):
    plan = plan_build(version, precision)
    strong = plan.typing is Typing.strong
    assert strong == (tuple(int(p) for p in version.split(".")[:2]) >= (10, 12))
    assert (NetworkFlag.STRONGLY_TYPED in plan.network_flags) == strong
    precision_flags = {BuilderFlag.FP16, BuilderFlag.INT8} & set(plan.set_flags)
    if strong:
        assert not precision_flags  # a strongly typed network rejects precision flags; 11.x removed them
    else:
        assert precision_flags == {EnginePrecision.fp16: {BuilderFlag.FP16}, EnginePrecision.int8: {BuilderFlag.INT8},
                                   EnginePrecision.fp32: set()}[precision]
    assert (BuilderFlag.TF32 in plan.clear_flags) == (precision is EnginePrecision.fp32)


def test_jetpack6_tensorrt_is_weakly_typed_with_flags():
    plan = plan_build("10.3.0", "fp16")
    assert plan.to_dict() == {"typing": "weak", "network_flags": [], "builder_flags": ["FP16"],
                              "cleared_flags": []}


def test_tensorrt_8_is_refused():
    with pytest.raises(MissingDependencyError, match=r"TensorRT 8\.6\.1 is too old.*>= 10\.0"):
        plan_build("8.6.1", "fp32")


def test_engine_names():
    assert [engine_name(p) for p in EnginePrecision] == ["model.fp32.engine", "model.fp16.engine", "model.int8.engine"]


# -------------------------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("text, expected", [("1:8:32", (1, 8, 32)), (" 2 : 4 : 4 ", (2, 4, 4)), ("8", (8, 8, 8))])
def test_profile_parse(text, expected):
    profile = BatchProfile.parse(text)
    assert (profile.min, profile.opt, profile.max) == expected
    assert str(profile) == ":".join(map(str, expected))


@pytest.mark.parametrize("text, message", [("1:x:4", "MIN:OPT:MAX"), ("1:2", "MIN:OPT:MAX"), ("", "MIN:OPT:MAX"),
                                           ("0:1:2", "MIN must be >= 1"), ("4:2:8", "MIN <= OPT <= MAX"),
                                           ("1:9:8", "MIN <= OPT <= MAX")])
def test_profile_parse_errors(text, message):
    with pytest.raises(InputError, match=message):
        BatchProfile.parse(text)


def test_profile_shapes_and_dict():
    profile = BatchProfile(1, 8, 32)
    assert profile.shapes((3, 224, 224)) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert profile.to_dict("input", (1, 28, 28)) == {"input": "input", "min": [1, 1, 28, 28], "opt": [8, 1, 28, 28],
                                                     "max": [32, 1, 28, 28]}


def _manifest(shape, dynamic, artifacts=()) -> Manifest:
    return Manifest(source={"path": "x.pt"}, model={"arch": "lenet", "num_classes": 10, "class_names": None},
                    input={"name": "input", "shape": shape, "dtype": "float32", "dynamic_batch": dynamic},
                    output={"name": "logits", "shape": [shape[0], 10]},
                    preprocess={"channels": 1, "height": 28, "width": 28, "mean": [0.5], "std": [0.5]},
                    opset=18, artifacts=list(artifacts))


def test_resolve_profile():
    assert resolve_profile(_manifest([None, 1, 28, 28], True), None) == DEFAULT_PROFILE
    assert resolve_profile(_manifest([None, 1, 28, 28], True), BatchProfile(2, 2, 4)) == BatchProfile(2, 2, 4)
    assert resolve_profile(_manifest([4, 1, 28, 28], False), None) == BatchProfile.fixed(4)
    assert resolve_profile(_manifest([4, 1, 28, 28], False), BatchProfile.fixed(4)) == BatchProfile.fixed(4)
    with pytest.raises(InputError, match="fixed batch of 4.*--dynamic-batch"):
        resolve_profile(_manifest([4, 1, 28, 28], False), BatchProfile(1, 4, 8))


# ------------------------------------------------------------------------------------------ compatibility

ORIN = Host("10.3.0", "Orin", "8.7")


def test_same_tensorrt_and_gpu_is_compatible():
    facts = {"tensorrt": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7", "precision": "fp16"}
    check_compatible(facts, ORIN, engine="model.fp16.engine")  # the build number does not matter


@pytest.mark.parametrize("facts, message", [
    ({"tensorrt": "10.13.0", "gpu": "Orin", "compute_capability": "8.7"},
     r"built by TensorRT 10\.13\.0 and this is TensorRT 10\.3\.0"),
    ({"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
     r"built for NVIDIA H100 80GB HBM3 \(compute capability 9\.0\) and this GPU is Orin \(8\.7\)"),
])
def test_mismatch_says_what_and_how_to_rebuild(facts, message, tmp_path):
    with pytest.raises(EngineMismatchError, match=message) as err:
        check_compatible({**facts, "precision": "int8"}, ORIN, engine="model.int8.engine", folder=tmp_path / "exp")
    assert str(err.value).endswith(f"rebuild it here: deploykit build {tmp_path / 'exp'} --precision int8")


def test_same_compute_capability_other_gpu_only_warns():
    from deploykit.messages import Recorder

    seen = Recorder()
    check_compatible({"tensorrt": "10.3.0", "gpu": "Jetson AGX Orin", "compute_capability": "8.7"}, ORIN,
                     engine="model.fp32.engine", reporter=seen)
    warned = seen.of("warn")
    assert len(warned) == 1 and "Jetson AGX Orin" in warned[0] and "rebuild for best speed" in warned[0]


# ------------------------------------------------------------------------------------ messages & paths


def test_missing_message_is_one_line_with_the_commands():
    msg = missing_message(["TensorRT's Python bindings (import tensorrt) are not installed", "no CUDA GPU is visible"],
                          Path("exports/my model"), [EnginePrecision.fp16, EnginePrecision.int8],
                          done="exports/my model: ONNX artifacts written and verified", profile=BatchProfile(1, 4, 16),
                          workspace_gib=0.5)
    assert "\n" not in msg
    assert msg.startswith("exports/my model: ONNX artifacts written and verified; no TensorRT engine built: ")
    assert 'pip install "deploykit[trt]" on a CUDA host' in msg and "JetPack's TensorRT Python bindings" in msg
    assert msg.endswith("deploykit build 'exports/my model' --precision fp16 --profile 1:4:16 --workspace 0.5 && "
                        "deploykit build 'exports/my model' --precision int8 --profile 1:4:16 --workspace 0.5")


def test_build_command_leaves_out_defaults():
    assert build_command(Path("exp"), "fp32") == "deploykit build exp --precision fp32"
    assert build_command(Path("exp"), "fp32", DEFAULT_PROFILE) == "deploykit build exp --precision fp32"
    assert build_command(Path("exp"), "fp32", BatchProfile.fixed(4)) == "deploykit build exp --precision fp32"


def test_timing_cache_path_per_tensorrt_and_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path))
    orin = default_timing_cache(ORIN)
    assert orin == tmp_path / "timing" / "trt10.3.0-orin-sm_87.cache"
    assert default_timing_cache(Host("10.3.0.30", "Orin", "8.7")) == orin
    assert default_timing_cache(Host("10.13.0", "Orin", "8.7")) != orin
    assert default_timing_cache(Host("10.3.0", "NVIDIA GeForce RTX 4090", "8.9")).name == \
        "trt10.3.0-nvidia-geforce-rtx-4090-sm_89.cache"


def test_timing_cache_default_dir_without_override(monkeypatch, tmp_path):
    monkeypatch.delenv("DEPLOYKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_timing_cache(ORIN)
    assert path.parent.name == "timing" and "deploykit" in str(path)


@pytest.mark.parametrize("messages, oom", [
    (["[virtualMemoryBuffer.cpp::resizePhysical::140] Error Code 2: OutOfMemory (Requested size was 8589934592 bytes.)"],
     True),
    (["Error Code 1: Cuda Runtime (out of memory)"], True),
    (["[optimizer.cpp] Error Code 10: Internal Error (Could not find any implementation for node /conv)"], False),
    ([], False)])
def test_out_of_memory_is_recognised(messages, oom):
    assert is_out_of_memory(messages) is oom


NO_IMPLEMENTATION = ("[optimizer.cpp::computeCosts::4058] Error Code 10: Internal Error (Could not find any "
                     "implementation for node /features/features.0/Conv.)")


@pytest.mark.parametrize("warnings, errors, oom", [
    # TensorRT 10 on a Jetson: every tactic of a layer is skipped for memory, then no implementation is left
    (["Tactic Device request: 4096MB Available: 1536MB. Device memory is insufficient to use tactic.",
      "Skipping tactic 3 due to insufficient memory on requested size of 4294967296 detected for tactic "
      "0x0000000000000004."], [NO_IMPLEMENTATION], True),
    (["Skipping tactic 0 due to insuficient memory on requested size of 8589934592 detected for tactic "
      "0x0000000000000000."], [NO_IMPLEMENTATION], True),  # the misspelling some releases log
    (["Skipping tactic 1 due to insufficient memory"], [], True),  # a failed build with no error logged
    ([], [NO_IMPLEMENTATION], False),  # no memory warning: an unsupported layer, not memory
    (["Skipping tactic 1 due to insufficient memory"], ["Error Code 4: API Usage Error (Network has dynamic or "
                                                        "shape inputs, but no optimization profile)"], False),
    (["Detected layernorm nodes in FP16."], [NO_IMPLEMENTATION], False),
])
def test_out_of_memory_is_recognised_from_tactic_warnings(warnings, errors, oom):
    assert is_out_of_memory(errors, warnings) is oom


def test_oom_message_suggests_a_smaller_workspace():
    msg = oom_message("model.fp16.engine", 2.0, Path("exp"), EnginePrecision.fp16, BatchProfile(1, 8, 32))
    assert "ran out of GPU memory building model.fp16.engine with a 2 GiB workspace" in msg
    assert "e.g. deploykit build exp --precision fp16 --workspace 1;" in msg  # 1:8:32 is the default profile
    assert "--profile 1:4:16" in msg and "swap" in msg
    assert "TensorRT's default workspace" in oom_message("model.fp32.engine", None, Path("exp"),
                                                         EnginePrecision.fp32, BatchProfile.fixed(1))


def test_calibration_hash_comes_from_the_calibration_cache(tmp_path):
    (tmp_path / "calib-entropy-0123456789abcdef.json").write_text(json.dumps({"key": "0123456789abcdef" + "9" * 48}))
    int8 = {"path": "model.int8.onnx", "precision": "int8",
            "details": {"calibration": {"cache": "calib-entropy-0123456789abcdef.json"}}}
    manifest = _manifest([None, 1, 28, 28], True, [int8])
    assert calibration_hash(manifest, tmp_path) == "0123456789abcdef" + "9" * 48
    (tmp_path / "calib-entropy-0123456789abcdef.json").unlink()  # cache not copied: the name still carries it
    assert calibration_hash(manifest, tmp_path) == "0123456789abcdef"
    assert calibration_hash(_manifest([None, 1, 28, 28], True), tmp_path) is None


# ----------------------------------------------------------------------------------------------- CLI


@pytest.mark.skipif(TRT_HERE, reason="TensorRT and a GPU are here: the engine is built instead (see the trt tests)")
def test_export_to_trt_writes_and_verifies_onnx_then_exits_3(cli, lenet_ckpt, tmp_path):
    out = tmp_path / "exp"
    result = cli("export", lenet_ckpt, "--to", "trt", "--fp16", "--profile", "1:4:16", "--workspace", "0.5",
                 "--out", out)
    assert result.exit_code == 3, result.output
    manifest = Manifest.load(out)
    assert manifest.input["dynamic_batch"] and manifest.input["shape"][0] is None  # --profile implies it
    assert {a["path"]: a["parity"]["passed"] for a in manifest.artifacts} == {"model.onnx": True,
                                                                              "model.fp16.onnx": True}
    assert not list(out.glob("*.engine"))
    lines = result.output.splitlines()
    error = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(error) == 1, result.output
    assert lines[error[0]].startswith(f"error: {out}: ONNX artifacts written and verified; no TensorRT engine built: ")
    # the rest on lines of their own under it (issue 25: not one 600-character line): how to get TensorRT, then
    # each command to run on the target on a line by itself
    under = lines[error[0] + 1:]
    assert under[0].startswith('  Get them with pip install "deploykit[trt]"')
    assert under[1] == "  Then, on the target device, run:"
    assert under[2].strip() == f"deploykit build {out} --precision fp16 --profile 1:4:16 --workspace 0.5"


@pytest.mark.skipif(TRT_HERE, reason="TensorRT and a GPU are here: the engine is built instead (see the trt tests)")
def test_export_dynamic_batch_takes_the_engine_profile(cli, lenet_ckpt, tmp_path):
    """`--dynamic-batch MIN:OPT:MAX` is the issue's spelling of `--dynamic-batch --profile MIN:OPT:MAX`."""
    out = tmp_path / "exp"
    result = cli("export", lenet_ckpt, "--to", "trt", "--dynamic-batch", "2:4:16", "--no-verify", "--out", out)
    assert result.exit_code == 3, result.output
    manifest = Manifest.load(out)
    assert manifest.input["dynamic_batch"] and manifest.input["shape"][0] is None
    assert f"    deploykit build {out} --precision fp32 --profile 2:4:16" in result.output.splitlines()


def test_dynamic_batch_value_is_read_as_the_profile():
    from deploykit.cli.build import split_dynamic_batch

    assert split_dynamic_batch(["m.pt", "--dynamic-batch", "--fp16"]) == ["m.pt", "--dynamic-batch", "--fp16"]
    assert split_dynamic_batch(["--dynamic-batch", "m.pt"]) == ["--dynamic-batch", "m.pt"]  # a bare flag
    for args in (["m.pt", "--dynamic-batch", "1:8:32"], ["m.pt", "--dynamic-batch=1:8:32"]):
        assert split_dynamic_batch(args) == ["m.pt", "--dynamic-batch", "--profile", "1:8:32"]
    assert split_dynamic_batch(["--dynamic-batch", "1:8:32", "--", "-m.pt"]) == \
        ["--dynamic-batch", "--profile", "1:8:32", "--", "-m.pt"]


@pytest.mark.parametrize("args, message", [
    (("--profile", "1:4:8"), "--dynamic-batch MIN:OPT:MAX (alias --profile) only apply with --to trt"),
    (("--dynamic-batch", "1:4:8"), "--dynamic-batch MIN:OPT:MAX (alias --profile) only apply with --to trt"),
    (("--to", "trt", "--profile", "4:1:8"), "need MIN <= OPT <= MAX"),
    (("--to", "trt", "--dynamic-batch", "4:1:8"), "need MIN <= OPT <= MAX"),
    (("--to", "trt", "--dynamic-batch=1:x8:16"), "MIN:OPT:MAX batch sizes, e.g. 1:8:32; got '1:x8:16'"),
    (("--to", "trt", "--dynamic-batch", "1:4"), "MIN:OPT:MAX batch sizes, e.g. 1:8:32; got '1:4'"),
    (("--to", "trt", "--dynamic-batch", "1:4:8", "--profile", "1:4:8"), "give the batch range once"),
    (("--to", "trt", "--workspace", "0"), "--workspace is in GiB and must be > 0"),
    (("--to", "trt", "--int8", "--int8-for", "cpu"), "--int8-for cpu alone does not make: add --int8-for trt"),
])
def test_export_trt_option_errors_come_before_any_work(cli, lenet_ckpt, tmp_path, args, message):
    out = tmp_path / "exp"
    result = cli("export", lenet_ckpt, "--out", out, *args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (out / "model.onnx").exists()


@pytest.fixture(scope="module")
def fixed_folder(lenet_ckpt, tmp_path_factory) -> Path:
    from deploykit.pipeline import export_folder

    return export_folder(lenet_ckpt, out=tmp_path_factory.mktemp("fixed") / "exp", verify=False).folder


@pytest.mark.parametrize("args, message, code", [
    (("--precision", "int8"), "has no int8 ONNX to build from; export it first", 1),
    (("--precision", "fp32", "--profile", "1:8:32"), "fixed batch of 1, so the engine does too", 1),
    (("--precision", "fp32", "--workspace", "-1"), "--workspace is in GiB and must be > 0", 1),
    (("--precision", "fp4",), "Invalid value for '--precision'", 2),
])
def test_build_errors(cli, fixed_folder, args, message, code):
    result = cli("build", fixed_folder, *args)
    assert result.exit_code == code and message in result.output, result.output


def test_build_needs_an_export_folder(cli, tmp_path):
    result = cli("build", tmp_path)
    assert result.exit_code == 1 and "not an export folder" in result.output


def test_build_refuses_a_changed_onnx(cli, fixed_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(fixed_folder, folder)
    with open(folder / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    result = cli("build", folder)
    assert result.exit_code == 1 and "changed since export" in result.output


def _list_fake_engine(folder: Path) -> None:
    """A file named like an engine, listed in the manifest with its hash (as `deploykit build` records one)."""
    from deploykit.files import sha256_file

    (folder / "model.fp32.engine").write_bytes(b"not a plan")
    manifest = Manifest.load(folder)
    manifest.set_artifact({"path": "model.fp32.engine", "precision": "fp32", "parity": None,
                           "sha256": sha256_file(folder / "model.fp32.engine")})
    manifest.save(folder)


@pytest.mark.skipif(TRT_HERE, reason="TensorRT and a GPU are here")
def test_predict_on_an_engine_without_tensorrt_exits_3(cli, fixed_folder, photos, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(fixed_folder, folder)
    _list_fake_engine(folder)
    result = cli("predict", folder / "model.fp32.engine", photos / "chelsea.png")
    assert result.exit_code == 3 and "cannot run model.fp32.engine" in result.output, result.output


def test_verify_one_artifact_of_a_folder(cli, fixed_folder, tmp_path):
    result = cli("verify", fixed_folder / "model.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert [(a["path"], a["passed"]) for a in json.loads(result.stdout)["artifacts"]] == [("model.onnx", True)]


@pytest.mark.skipif(TRT_HERE, reason="TensorRT and a GPU are here")
def test_verify_an_engine_file_without_tensorrt_exits_3(cli, fixed_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(fixed_folder, folder)
    _list_fake_engine(folder)
    result = cli("verify", folder / "model.fp32.engine")
    assert result.exit_code == 3 and "cannot run model.fp32.engine" in result.output, result.output


@pytest.mark.parametrize("name, message", [
    ("model.onnx", "has no deploykit.json beside it: verify compares an artifact with its export folder's reference"),
    ("model.fp32.engine", "has no deploykit.json beside it"),
])
def test_verify_a_file_without_its_manifest_is_one_line(cli, fixed_folder, tmp_path, name, message):
    shutil.copy(fixed_folder / "model.onnx", tmp_path / name)
    result = cli("verify", tmp_path / name)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_verify_a_file_the_manifest_does_not_list(cli, fixed_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(fixed_folder, folder)
    shutil.copy(folder / "model.onnx", folder / "other.onnx")
    result = cli("verify", folder / "other.onnx")
    assert result.exit_code == 1 and "other.onnx is not listed in" in result.output


def test_predict_on_an_engine_without_its_manifest(cli, photos, tmp_path):
    (tmp_path / "model.fp32.engine").write_bytes(b"plan")
    result = cli("predict", tmp_path / "model.fp32.engine", photos / "chelsea.png")
    assert result.exit_code == 1 and "needs the deploykit.json of its export folder" in result.output


# --------------------------------------------------------------------------------- TensorRT + GPU only


@pytest.fixture(scope="module")
def trt_folder(lenet_ckpt, tmp_path_factory) -> Path:
    """LeNet with FP32, FP16 and INT8 ONNX (dynamic batch), calibrated on digits."""
    from _digits import digits_arrays, write_imagefolder

    from deploykit.pipeline import export_folder
    from deploykit.precision import PrecisionRequest

    root = tmp_path_factory.mktemp("trt_engines")
    images, labels = digits_arrays()
    calib = write_imagefolder(root / "calib", images[:64], labels[:64])
    request = PrecisionRequest(fp16=True, int8=True, calib=calib, min_calib=32)
    return export_folder(lenet_ckpt, out=root / "exp", dynamic_batch=True, precision=request).folder


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_verify_and_run_engines(cli, trt_folder, precision, photos, monkeypatch, tmp_path):
    import tensorrt as trt

    from deploykit.bench.measure import TrtSteps
    from deploykit.runners.onnxrt import OnnxRuntimeRunner
    from deploykit.runners.tensorrt import TensorRTRunner

    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "cache"))
    result = cli("build", trt_folder, "--precision", precision, "--profile", "1:4:8", "--workspace", "1")
    assert result.exit_code == 0, result.output
    path = trt_folder / f"model.{precision}.engine"
    entry = Manifest.load(trt_folder).artifact(path.name)
    facts = entry["engine"]
    assert facts["tensorrt"] == trt.__version__ and facts["precision"] == precision
    assert facts["profile"] == {"input": "input", "min": [1, 1, 28, 28], "opt": [4, 1, 28, 28], "max": [8, 1, 28, 28]}
    assert facts["build_seconds"] > 0 and facts["typing"] in ("strong", "weak")
    assert (facts["calibration_sha256"] is not None) == (precision == "int8")
    assert entry["parity"]["passed"], entry["parity"]
    # the plain plan: TensorRT deserializes the file's bytes as they are, no prefix to strip
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    assert runtime.deserialize_cuda_engine(path.read_bytes()) is not None
    # same interface and close numbers as ONNX Runtime on the same graph; batches outside the profile are chunked
    onnx = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}[precision]
    batch = np.random.default_rng(0).standard_normal((11, 1, 28, 28)).astype(np.float32)
    runner = TensorRTRunner(path)  # activated by its first infer
    got, want = runner.infer(batch), OnnxRuntimeRunner(trt_folder / onnx).infer(batch)
    assert got.shape == (11, 10) and got.dtype == np.float32
    assert (got.argmax(1) == want.argmax(1)).mean() >= (1.0 if precision == "fp32" else 0.9)
    steps = TrtSteps(runner, batch[:4])
    assert steps.end_to_end() > 0 and steps.compute() > 0
    steps.close()
    runner.close()
    assert not runner.active and runner.infer(batch[:2]).shape == (2, 10)  # a closed runner opens again on use
    runner.close()
    # a second build reuses the timing cache
    again = cli("build", trt_folder, "--precision", precision, "--profile", "1:4:8", "--no-verify")
    assert again.exit_code == 0, again.output
    assert Manifest.load(trt_folder).artifact(path.name)["engine"]["timing_cache"]["reused"]
    predicted = cli("predict", path, photos / "chelsea.png", "--json")
    assert predicted.exit_code == 0 and len(json.loads(predicted.stdout)["predictions"][0]["top"]) == 5


@pytest.mark.trt
@needs_trt
def test_engine_from_another_tensorrt_is_refused_before_loading(cli, trt_folder, photos, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(trt_folder, folder)
    result = cli("build", folder, "--precision", "fp32", "--no-verify")
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(folder)
    manifest.artifact("model.fp32.engine")["engine"]["tensorrt"] = "9.9.9"
    manifest.save(folder)
    result = cli("predict", folder / "model.fp32.engine", photos / "chelsea.png")
    assert result.exit_code == 1 and "built by TensorRT 9.9.9" in result.output


@pytest.mark.trt
@needs_trt
def test_export_to_trt_builds_verified_engines(cli, lenet_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "exp"
    result = cli("export", lenet_ckpt, "--to", "trt", "--fp16", "--dynamic-batch", "--out", out)
    assert result.exit_code == 0, result.output
    entry = Manifest.load(out).artifact("model.fp16.engine")
    assert entry["parity"]["reference"] == "pytorch" and entry["parity"]["passed"]
    assert entry["engine"]["profile"]["max"][0] == DEFAULT_PROFILE.max
