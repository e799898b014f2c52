"""deploykit.pipeline without the CLI: build_folder's lock (held from the build to the manifest's save, released on
every way out), its refusals without TensorRT, the build against the fake `tensorrt` module of test_trt_build.py
(injected through ``probe=``), and export_folder's pieces that need no minutes of export work."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from deploykit.errors import InputError, MissingDependencyError
from deploykit.folder import folder_lock, lock_path
from deploykit.manifest import Manifest
from deploykit.pipeline import build_folder, default_out, export_folder
from deploykit.messages import Recorder
from deploykit.tensorrt.profile import BatchProfile
from test_trt_build import fake_tensorrt, probe_with

LENET = Path(__file__).resolve().parent / "data" / "lenet_export"


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "cache"))  # the timing cache of the fake builds
    copy = tmp_path / "exp"
    shutil.copytree(LENET, copy)
    return copy


def _second_locker(folder: Path) -> str:
    """What a second writer of ``folder`` hears (an export or build in another process takes the same lock)."""
    try:
        with folder_lock(folder, "export"):
            return "got the lock"
    except InputError as exc:
        return str(exc)


def test_build_folder_without_tensorrt_exits_3_holding_the_lock_meanwhile(folder):
    heard = []

    def no_tensorrt():
        heard.append(_second_locker(folder))  # asked while the build runs
        return ["TensorRT's Python bindings (import tensorrt) are not installed"]

    before = (folder / "deploykit.json").read_bytes()
    with pytest.raises(MissingDependencyError) as exc:
        build_folder(folder, "fp16", profile=BatchProfile(1, 4, 8), probe=no_tensorrt)
    assert exc.value.exit_code == 3 and "deploykit build" in "\n".join(exc.value.lines)
    assert heard == [f"another deploykit export is writing {folder} right now; wait for it to finish, or choose "
                     "another --out"]
    assert _second_locker(folder) == "got the lock" and not lock_path(folder).exists()  # released on the way out
    assert (folder / "deploykit.json").read_bytes() == before


def test_build_folder_refuses_a_bad_workspace_before_taking_the_lock(folder):
    with folder_lock(folder, "build"):  # held by someone else: the workspace is refused first, as build_engine does
        with pytest.raises(InputError, match="--workspace is in GiB and must be > 0, got 0"):
            build_folder(folder, "fp32", workspace_gib=0, probe=lambda: pytest.fail("probed"))


def test_build_folder_refuses_while_another_writer_holds_the_folder(folder):
    with folder_lock(folder, "export"):
        with pytest.raises(InputError, match="another deploykit build is writing"):
            build_folder(folder, "fp32", probe=lambda: pytest.fail("probed"))


def test_build_folder_records_the_engine_and_reports_it_before_verifying(folder):
    """The fake TensorRT builds model.fp16.engine; ``on_built`` hears of it inside the lock; verify=False leaves
    the verdict empty and the lock released."""
    built = []

    def on_built(engine):
        built.append((engine.path.name, _second_locker(folder)))

    recorder = Recorder()
    result = build_folder(folder, "fp16", profile=BatchProfile(1, 4, 8), verify=False, reporter=recorder,
                          on_built=on_built, probe=probe_with(fake_tensorrt("10.13.3")))
    assert result.report is None and result.engine.path == folder / "model.fp16.engine"
    assert built == [("model.fp16.engine", f"another deploykit export is writing {folder} right now; wait for it "
                                           "to finish, or choose another --out")]
    entry = Manifest.load(folder).artifact("model.fp16.engine")
    assert entry.parity is None and entry.engine["tensorrt"] == "10.13.3"
    assert [s for s in recorder.of("status") if s.startswith("verifying")] == []
    assert _second_locker(folder) == "got the lock"


def test_build_folder_verifies_the_engine_it_built(folder):
    """verify=True runs the engine just built: without a TensorRT runtime here that is exit 3 (the engine was named,
    so it is not skipped), the engine stays recorded unverified, and the lock is released."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the fake engine would be loaded by the real runtime")
    recorder = Recorder()
    with pytest.raises(MissingDependencyError):
        build_folder(folder, "fp32", verify=True, reporter=recorder, probe=probe_with(fake_tensorrt()))
    assert "verifying model.fp32.engine" in recorder.of("status")
    assert Manifest.load(folder).artifact("model.fp32.engine").parity is None
    assert _second_locker(folder) == "got the lock"


# ------------------------------------------------------------------------------------------------ export


def test_export_folder_refuses_an_out_another_writer_holds_before_loading_the_model(tmp_path):
    out = tmp_path / "exp"
    with folder_lock(out, "build"):
        with pytest.raises(InputError, match="another deploykit export is writing"):
            export_folder(tmp_path / "no-such-checkpoint.pth", out=out)  # refused before the model is read


def test_export_folder_refuses_an_out_that_is_another_folder(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"not deploykit's")
    with pytest.raises(InputError):
        export_folder(tmp_path / "no-such-checkpoint.pth", out=out)
    assert (out / "cat.jpg").read_bytes() == b"not deploykit's" and not lock_path(out).exists()


@pytest.mark.parametrize("path, arch, expected", [
    ("runs/digits-lenet/best.pth", None, "digits-lenet"),
    ("resnet18-cats.pt", None, "resnet18-cats"),
    ("runs/best.pth", "lenet", "lenet"),
])
def test_default_out_names_the_folder_after_the_run_not_best_pth(tmp_path, path, arch, expected):
    assert default_out(tmp_path / path, arch) == Path("exports") / expected


def test_export_then_build_share_one_folder(lenet_ckpt, tmp_path):
    """A LeNet export (verified: its verdicts recorded), then a build into it with the fake TensorRT: the FP32
    verdict stays, the engine is added, and the folder's lock is free after each."""
    exported = export_folder(lenet_ckpt, out=tmp_path / "exp", max_images=16)
    assert exported.report.passed and Manifest.load(exported.folder).artifact("model.onnx").passed is True
    assert _second_locker(exported.folder) == "got the lock"
    build_folder(exported.folder, "fp32", verify=False, probe=probe_with(fake_tensorrt()))
    manifest = Manifest.load(exported.folder)
    assert [a.path for a in manifest.artifacts] == ["model.onnx", "model.fp32.engine"]
    assert manifest.artifact("model.onnx").passed is True
