"""The TensorRT build steps, without TensorRT: the decisions as pure functions, the steps and the whole
`build_engine` against a small fake `tensorrt` module (injected through `probe=`, nothing monkeypatched).

The fake does what the real API does where deploykit depends on it: flags on a builder config, a network parsed
from a file, an optimization profile, a timing cache that round-trips, and an IProgressMonitor driven through
nested phases. Real engines are built by the ``trt`` tests in test_trt.py on a TensorRT host.
"""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest

from deploykit.errors import (EngineBuildError, EngineMismatchError, EngineRuntimeError, InputError,
                              MissingDependencyError)
from deploykit.manifest import Manifest
from deploykit.messages import SILENT, Recorder
from deploykit.tensorrt.build import build_engine, create_config
from deploykit.tensorrt.build_errors import build_failure
from deploykit.tensorrt.build_progress import PhaseProgress
from deploykit.tensorrt.plan import BuilderFlag, network_creation_flags, plan_build, set_builder_flags
from deploykit.tensorrt.host import Host, engine_host, probe_host, require_host
from deploykit.tensorrt.profile import BatchProfile, EnginePrecision, input_profile

LENET = Path(__file__).resolve().parent / "data" / "lenet_export"
PHASES = [("Building engine", None, 3), ("Optimizing", "Building engine", 2)]


# ------------------------------------------------------------------------------------------ a fake TensorRT


def fake_tensorrt(version: str = "10.3.0", *, strongly_typed_flag: bool = True, precision_flags: bool = True,
                  build_errors: tuple[str, ...] = (), build_warnings: tuple[str, ...] = (), parse_ok: bool = True,
                  input_shape: tuple[int, ...] = (-1, 1, 28, 28)):
    """A ``tensorrt`` module with the members deploykit's build calls; ``trt.built`` records what it was asked."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.built = []
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**({"STRONGLY_TYPED": 5} if strongly_typed_flag else {}))
    trt.BuilderFlag = types.SimpleNamespace(TF32=7, **({"FP16": 0, "INT8": 1} if precision_flags else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")

    class ILogger:
        Severity = types.SimpleNamespace(ERROR=1, WARNING=2)

        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timed"

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.pools, self.profiles = set(), set(), {}, []
            self.cache, self.progress_monitor = None, None

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.cleared.add(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return not cache.blob.startswith(b"bad")

        def get_timing_cache(self):
            return self.cache

    class Network:
        def __init__(self, flags):
            self.flags, self.num_inputs = flags, 0

        def get_input(self, i):
            return types.SimpleNamespace(name="input", shape=input_shape)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0 if parse_ok else 1

        def parse_from_file(self, path):
            assert Path(path).is_file()
            self.network.num_inputs = 1
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shape = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            monitor = config.progress_monitor
            if monitor is not None:
                for name, parent, steps in PHASES:
                    monitor.phase_start(name, parent, steps)
                for step in range(2):
                    assert monitor.step_complete("Optimizing", step) is True
                monitor.phase_finish("Optimizing")
                assert monitor.step_complete("Building engine", 0) is True
                monitor.phase_finish("Building engine")
            for warning in build_warnings:
                self.logger.log(2, warning)
            for error in build_errors:
                self.logger.log(1, error)
            return None if build_errors or build_warnings else b"PLAN"

    trt.ILogger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser = ILogger, IProgressMonitor, Builder, OnnxParser
    return trt


ORIN = Host("10.3.0", "Orin", "8.7")


def probe_with(trt, host: Host = ORIN):
    return lambda: (trt, Host(trt.__version__, host.gpu, host.compute_capability))


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "exp"
    shutil.copytree(LENET, copy)
    return copy


# ------------------------------------------------------------------------------------ flags per version


@pytest.mark.parametrize("precision, flag", [("fp16", BuilderFlag.FP16), ("int8", BuilderFlag.INT8)])
def test_weakly_typed_10_3_sets_the_precision_flag_on_the_config(precision, flag):
    trt = fake_tensorrt("10.3.0")
    plan = plan_build("10.3.0", precision)
    assert network_creation_flags(trt, plan) == 0
    config = create_config(trt, trt.Builder(None), plan, workspace_gib=0.5)
    assert config.flags == {getattr(trt.BuilderFlag, flag.value)} and config.cleared == set()
    assert config.pools == {"workspace": 1 << 29}


def test_weakly_typed_int8_with_an_fp16_remainder_sets_int8_and_fp16():
    """model.int8.onnx whose non-INT8 part is FP16 (--int8-remainder fp16): `trtexec --int8 --fp16`."""
    trt = fake_tensorrt("10.3.0")
    plan = plan_build("10.3.0", "int8", fp16_remainder=True)
    assert plan.to_dict()["builder_flags"] == ["INT8", "FP16"]
    config = create_config(trt, trt.Builder(None), plan)
    assert config.flags == {trt.BuilderFlag.INT8, trt.BuilderFlag.FP16} and config.cleared == set()
    assert plan_build("10.3.0", "int8", fp16_remainder=False).set_flags == (BuilderFlag.INT8,)
    assert plan_build("10.3.0", "fp16", fp16_remainder=True).set_flags == (BuilderFlag.FP16,)


@pytest.mark.parametrize("version", ["10.12.0", "10.16.1.11", "11.4.0.106"])
@pytest.mark.parametrize("precision", list(EnginePrecision))
@pytest.mark.parametrize("fp16_remainder", [False, True])
def test_strongly_typed_sets_no_precision_flag(version, precision, fp16_remainder):
    trt = fake_tensorrt(version, precision_flags=not version.startswith("11."))
    plan = plan_build(version, precision, fp16_remainder=fp16_remainder)
    assert network_creation_flags(trt, plan) == 1 << 5
    config = create_config(trt, trt.Builder(None), plan)
    assert config.flags == set() and config.pools == {}
    assert config.cleared == ({trt.BuilderFlag.TF32} if precision == "fp32" else set())


def test_a_flag_tensorrt_lacks_is_left_out_only_where_optional():
    trt = fake_tensorrt("11.4.0", strongly_typed_flag=False, precision_flags=False)
    assert network_creation_flags(trt, plan_build("11.4.0", "fp16")) == 0  # every network is strong on 11
    with pytest.raises(AttributeError):  # a precision flag the plan needs is required
        set_builder_flags(trt, trt.Builder(None).create_builder_config(), plan_build("10.3.0", "fp16"))


# -------------------------------------------------------------------------------------------- profiles


def test_input_profile():
    assert input_profile((-1, 1, 28, 28), BatchProfile(1, 8, 32), "model.onnx") == ((1, 28, 28), True)
    assert input_profile((4, 3, 8, 8), BatchProfile.fixed(4), "model.onnx") == ((3, 8, 8), False)
    with pytest.raises(InputError, match="fixed batch of 4; re-export with --dynamic-batch"):
        input_profile((4, 3, 8, 8), BatchProfile(1, 4, 8), "model.onnx")
    with pytest.raises(InputError, match="fixed batch of 4"):
        input_profile((4, 3, 8, 8), BatchProfile.fixed(2), "model.onnx")
    with pytest.raises(EngineBuildError, match="dynamic dimensions besides the batch"):
        input_profile((-1, 3, -1, -1), BatchProfile(1, 8, 32), "model.onnx")


# ------------------------------------------------------------------------------------------- progress


def test_build_phases_become_one_task_each_nested_ones_too():
    recorder = Recorder()
    phases = PhaseProgress(recorder)
    phases.started("Building engine", None, 3)
    phases.started("Optimizing", "Building engine", 2)
    phases.stepped("Optimizing", 0)
    phases.stepped("Optimizing", 1)
    phases.finished("Optimizing")
    phases.stepped("Building engine", 0)
    phases.close()  # a build that stops before "Building engine" finishes still ends its task
    assert [(t.description, t.total, t.completed) for t in recorder.tasks] == [("Optimizing", 2, 2),
                                                                               ("Building engine", 3, 1)]


def test_a_failing_reporter_never_stops_the_build():
    class Broken(Recorder):
        def progress(self, *args, **kwargs):
            raise RuntimeError("terminal gone")

    phases = PhaseProgress(Broken())
    phases.started("Building engine", None, 3)
    phases.stepped("Building engine", 0)
    phases.finished("Building engine")
    phases.close()


# ------------------------------------------------------------------------------------ the whole build


@pytest.mark.parametrize("version, typing, flags", [("10.3.0", "weak", ["FP16"]), ("10.13.3", "strong", [])])
def test_build_engine_with_a_fake_tensorrt(folder, version, typing, flags):
    trt = fake_tensorrt(version)
    recorder = Recorder()
    result = build_engine(folder, "fp16", profile=BatchProfile(1, 4, 8), workspace_gib=1, reporter=recorder,
                          probe=probe_with(trt))
    assert result.path == folder / "model.fp16.engine" and result.path.read_bytes() == b"PLAN"
    facts = result.facts
    assert (facts["tensorrt"], facts["typing"], facts["builder_flags"], facts["workspace_gib"]) == \
        (version, typing, flags, 1)
    assert facts["profile"] == {"input": "input", "min": [1, 1, 28, 28], "opt": [4, 1, 28, 28], "max": [8, 1, 28, 28]}
    assert facts["timing_cache"]["reused"] is False and facts["onnx"]["path"] == "model.fp16.onnx"
    assert facts["calibration_sha256"] is None
    entry = Manifest.load(folder).artifact("model.fp16.engine")
    assert entry["engine"] == facts and entry["parity"] is None and "batch" not in entry
    network, config = trt.built[0]
    assert config.profiles[0].shape == ("input", (1, 1, 28, 28), (4, 1, 28, 28), (8, 1, 28, 28))
    statuses = recorder.of("status")
    assert statuses[0] == f"parsing model.fp16.onnx ({typing}ly typed, TensorRT {version})"
    assert statuses[1].startswith("building model.fp16.engine (profile 1:4:8")
    assert [t.description for t in recorder.tasks] == ["Optimizing", "Building engine"]
    # the timing cache was written and the next build starts from it
    again = build_engine(folder, "fp16", profile=BatchProfile(1, 4, 8), probe=probe_with(trt))
    assert again.facts["timing_cache"]["reused"] is True
    assert trt.built[1][1].cache.blob == b"+timed"


def test_int8_engine_records_the_calibration_set(folder):
    """An export from before the remainder was recorded is an FP32 remainder: INT8 alone on a weakly typed 10.3."""
    manifest = Manifest.load(folder)
    entry = manifest.artifact("model.int8.onnx")
    entry["details"].pop("remainder", None)
    manifest.set_artifact(entry)
    manifest.save(folder)
    result = build_engine(folder, "int8", probe=probe_with(fake_tensorrt("10.3.0")))
    assert result.facts["builder_flags"] == ["INT8"]
    cache = entry["details"]["calibration"]["cache"]  # calib-<method>-<first 16 hex of the set's hash>.json
    assert result.facts["calibration_sha256"].startswith(cache.split("-")[-1].removesuffix(".json"))


@pytest.mark.parametrize("remainder, version, flags", [("fp16", "10.3.0", ["INT8", "FP16"]),
                                                       ("fp32", "10.3.0", ["INT8"]), ("fp16", "10.13.3", [])])
def test_int8_engine_flags_follow_the_recorded_remainder(folder, remainder, version, flags):
    """The manifest's model.int8.onnx entry says its remainder; an export from before it was recorded is FP32
    remainder: INT8 alone (test above)."""
    manifest = Manifest.load(folder)
    entry = manifest.artifact("model.int8.onnx")
    entry["details"]["remainder"] = remainder
    manifest.set_artifact(entry)
    manifest.save(folder)
    result = build_engine(folder, "int8", probe=probe_with(fake_tensorrt(version)))
    assert result.facts["builder_flags"] == flags


def test_a_timing_cache_tensorrt_rejects_is_replaced_with_a_warning(folder, tmp_path):
    cache = tmp_path / "old.cache"
    cache.write_bytes(b"bad cache")
    recorder = Recorder()
    result = build_engine(folder, "fp32", timing_cache=cache, reporter=recorder, probe=probe_with(fake_tensorrt()))
    assert result.facts["timing_cache"] == {"path": str(cache), "reused": False}
    assert recorder.of("warn") == [f"timing cache {cache} does not fit TensorRT 10.3.0 on Orin; starting a new one"]
    assert cache.read_bytes() == b"+timed"


def test_parse_failure_is_one_line(folder):
    with pytest.raises(EngineBuildError, match=r"TensorRT 10\.3\.0 cannot parse model\.onnx: In node 3 \(Conv\)"):
        build_engine(folder, "fp32", probe=probe_with(fake_tensorrt(parse_ok=False)))
    assert not (folder / "model.fp32.engine").exists()


def test_out_of_memory_build_says_to_lower_the_workspace(folder):
    trt = fake_tensorrt(build_warnings=("Skipping tactic 1 due to insufficient memory",))
    with pytest.raises(EngineBuildError, match="ran out of GPU memory building model.fp32.engine with a 2 GiB") as err:
        build_engine(folder, "fp32", workspace_gib=2, reporter=Recorder(), probe=probe_with(trt))
    assert f"deploykit build {folder} --precision fp32 --workspace 1;" in str(err.value)


def test_build_failure_message():
    error = build_failure(["Error Code 4: API Usage Error"], [], tensorrt="10.3.0", folder=Path("exp"),
                          precision=EnginePrecision.fp16, profile=BatchProfile(1, 8, 32), workspace_gib=None)
    assert str(error) == "TensorRT 10.3.0 could not build model.fp16.engine: Error Code 4: API Usage Error"


def test_fixed_batch_engine_records_its_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "exp"
    shutil.copytree(LENET, folder)
    manifest = Manifest.load(folder)
    manifest.input.update(shape=[4, 1, 28, 28], dynamic_batch=False)
    manifest.save(folder)
    result = build_engine(folder, "fp32", probe=probe_with(fake_tensorrt(input_shape=(4, 1, 28, 28))))
    assert result.entry["batch"] == 4 and result.facts["cleared_flags"] == ["TF32"]


# ------------------------------------------------------------------------------------- a missing host


def test_no_host_exits_3_with_the_command_to_run_on_the_target(folder):
    missing = ["TensorRT's Python bindings (import tensorrt) are not installed"]
    with pytest.raises(MissingDependencyError) as err:
        build_engine(folder, "fp16", workspace_gib=1, done="exp: ONNX written", probe=lambda: missing)
    assert err.value.exit_code == 3
    assert str(err.value).startswith("exp: ONNX written; no TensorRT engine built: TensorRT's Python bindings")
    assert str(err.value).endswith(f"deploykit build {folder} --precision fp16 --workspace 1")


def test_tensorrt_8_is_refused_before_any_work(folder):
    with pytest.raises(MissingDependencyError, match=r"TensorRT 8\.6\.1 is too old"):
        require_host(folder, "fp32", probe=probe_with(fake_tensorrt("8.6.1")))


def test_probe_host_says_what_is_missing():
    assert probe_host(load_tensorrt=lambda: None, load_cudart=lambda: None) == [
        "TensorRT's Python bindings (import tensorrt) are not installed",
        "the CUDA Python bindings (cuda-python) are not installed"]
    assert probe_host(load_tensorrt=lambda: object(), load_cudart=lambda: None) == [
        "the CUDA Python bindings (cuda-python) are not installed"]


def test_the_runner_needs_a_host(tmp_path):
    from deploykit.runners.tensorrt import TensorRTRunner

    (tmp_path / "model.fp32.engine").write_bytes(b"plan")
    runner = TensorRTRunner(tmp_path / "model.fp32.engine", probe=lambda: ["no CUDA GPU is visible (0 devices)"])
    with pytest.raises(MissingDependencyError, match="cannot run model.fp32.engine: no CUDA GPU is visible"):
        runner.activate()  # __init__ only stores the path: activate() (or the first infer) loads
    assert not runner.active
    with pytest.raises(MissingDependencyError, match="cannot run TensorRT engines: x"):
        engine_host(probe=lambda: ["x"])


def test_run_time_failures_have_their_own_error_with_the_same_exit_code():
    assert EngineRuntimeError.exit_code == EngineBuildError.exit_code == EngineMismatchError.exit_code == 1
    assert not issubclass(EngineRuntimeError, EngineBuildError)


def test_a_library_build_is_silent_by_default():
    assert build_engine.__kwdefaults__["reporter"] is SILENT


def test_the_package_imports_no_framework_and_no_rich():
    """`deploykit.tensorrt` is lazy, and none of its modules imports tensorrt, cuda-python or rich when imported."""
    import subprocess
    import sys

    code = ("import sys, deploykit.tensorrt as t; before = 'deploykit.tensorrt.build' in sys.modules; "
            "import deploykit.tensorrt.host, deploykit.tensorrt.build, deploykit.runners.tensorrt; "
            "print(before, sorted(m for m in ('tensorrt', 'cuda', 'rich', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False []"
