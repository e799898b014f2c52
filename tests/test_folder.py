"""Unit tests of the export folder as a transaction (``deploykit.folder``): staging, swap, lock.

Tiny fake exports (a manifest over a few bytes): fast, no model. The basic swap / failure / refusal / lock cases
are in test_trust.py; these cover the rest of the transaction's contract.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import deploykit.folder as folder_module
from deploykit.errors import InputError
from deploykit.files import sha256_file
from deploykit.folder import (STAGING_TAG, folder_lock, lock_path, previous_export, staged_export,
                              terminate_as_interrupt)
from deploykit.manifest import MANIFEST_NAME, Manifest


def _export(folder: Path, files: dict[str, bytes]) -> None:
    """A minimal valid export in ``folder`` listing ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(source={"path": "x.pth"}, model={"num_classes": 2},
                        input={"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"},
                        output={"name": "logits", "shape": [1, 2], "dtype": "float32"},
                        preprocess={"channels": 1, "height": 8, "width": 8, "mean": [0.0], "std": [1.0]}, opset=18)
    for name, data in files.items():
        (folder / name).write_bytes(data)
        manifest.set_artifact({"path": name, "precision": "fp32", "sha256": sha256_file(folder / name)})
    manifest.save(folder)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _beside(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_a_first_export_appears_whole(tmp_path):
    out = tmp_path / "ex"
    with folder_lock(out), staged_export(out) as (staging, previous):
        assert previous is None and not out.exists()
        _export(staging, {"model.onnx": b"graph"})
    assert set(_contents(out)) == {MANIFEST_NAME, "model.onnx"}
    assert _beside(tmp_path) == ["ex"]


def test_calibration_caches_are_seeded_into_the_staging_folder(tmp_path):
    out = tmp_path / "ex"
    _export(out, {"model.onnx": b"old"})
    (out / "calib-0123.json").write_text("{}")
    with folder_lock(out), staged_export(out) as (staging, _):
        assert (staging / "calib-0123.json").read_text() == "{}"  # reused by a re-export
        _export(staging, {"model.onnx": b"new"})
    assert (out / "calib-0123.json").is_file() and (out / "model.onnx").read_bytes() == b"new"


def test_an_empty_existing_folder_is_filled_in_place(tmp_path, monkeypatch):
    out = tmp_path / "ex"
    out.mkdir()
    monkeypatch.chdir(out)  # a shell inside the empty --out keeps its folder
    inode = out.stat().st_ino
    with folder_lock(out), staged_export(out) as (staging, _):
        _export(staging, {"model.onnx": b"graph"})
    assert out.stat().st_ino == inode and set(_contents(out)) == {MANIFEST_NAME, "model.onnx"}
    assert Path.cwd() == out and _beside(tmp_path) == ["ex"]


def test_without_an_atomic_exchange_two_renames_give_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "_exchange", lambda a, b: False)
    out = tmp_path / "ex"
    _export(out, {"model.onnx": b"old", "model.fp16.onnx": b"old half"})
    (out / "notes.txt").write_text("mine")
    with folder_lock(out), staged_export(out) as (staging, _):
        _export(staging, {"model.onnx": b"new"})
    assert set(_contents(out)) == {MANIFEST_NAME, "model.onnx", "notes.txt"}
    assert (out / "model.onnx").read_bytes() == b"new" and Manifest.load(out).artifact("model.onnx")["sha256"] == sha256_file(out / "model.onnx")
    assert _beside(tmp_path) == ["ex"]


def test_a_shell_inside_the_old_export_ends_up_in_the_new_one(tmp_path, monkeypatch):
    out = tmp_path / "ex"
    _export(out, {"model.onnx": b"old"})
    monkeypatch.chdir(out)
    with folder_lock(out), staged_export(out) as (staging, _):
        _export(staging, {"model.onnx": b"new"})
    assert Path.cwd() == out and Path("model.onnx").read_bytes() == b"new"


def test_user_symlinks_are_carried_as_links(tmp_path):
    out = tmp_path / "ex"
    _export(out, {"model.onnx": b"old"})
    (tmp_path / "data.txt").write_text("outside")
    os.symlink(tmp_path / "data.txt", out / "data-link")
    with folder_lock(out), staged_export(out) as (staging, _):
        _export(staging, {"model.onnx": b"new"})
    assert (out / "data-link").is_symlink() and os.readlink(out / "data-link") == str(tmp_path / "data.txt")


def test_previous_export_reads_refuses_or_ignores(tmp_path):
    assert previous_export(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert previous_export(tmp_path / "empty") is None
    _export(tmp_path / "ex", {"model.onnx": b"g"})
    assert previous_export(tmp_path / "ex").artifact("model.onnx") is not None
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        previous_export(tmp_path / "file")
    (tmp_path / "ex" / MANIFEST_NAME).write_text("{}")
    with pytest.raises(InputError, match="damaged export"):
        previous_export(tmp_path / "ex")


def test_the_lock_holds_the_pid_is_released_on_error_and_names_the_command(tmp_path):
    out = tmp_path / "ex"
    with pytest.raises(RuntimeError):
        with folder_lock(out, what="build"):
            assert lock_path(out).read_text() == f"{os.getpid()}\n"
            assert lock_path(out).parent == tmp_path and lock_path(out).name.startswith(".ex")
            with pytest.raises(InputError, match="another deploykit build is writing"):
                with folder_lock(out, what="build"):
                    pass
            raise RuntimeError("a bug inside")
    assert not lock_path(out).exists()
    with folder_lock(out):  # free again
        pass


def test_the_same_folder_by_another_spelling_takes_the_same_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    assert lock_path(Path("ex")) == lock_path(tmp_path / "sub" / ".." / "ex") == lock_path(tmp_path / "ex")
    with pytest.raises(InputError, match="file system root"):
        lock_path(Path("/"))


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_staging(tmp_path):
    out = tmp_path / "ex"
    _export(out, {"model.onnx": b"old"})
    before = _contents(out)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with terminate_as_interrupt(), folder_lock(out), staged_export(out) as (staging, _):
            (staging / "model.onnx").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
    # after an interrupt, further signals stay ignored until the command ends (its cleanup runs to the end)
    import deploykit.errors as errors

    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN and errors.interrupt_requested()
    errors._interrupted = False  # this process goes on: undo what the end of the command would
    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert _contents(out) == before
    assert not [p for p in tmp_path.iterdir() if STAGING_TAG in p.name] and not lock_path(out).exists()
