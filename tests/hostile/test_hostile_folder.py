"""An export folder is a transaction (issue 10, item 2), and every command that reads it checks its sha256s.

User files in --out are never deleted; a killed, interrupted or raced (re-)export leaves either the old export
intact or the new one whole (deploykit.json's sha256 = the files, no temp files inside); a failed export creates
nothing; a manifest's artifact paths stay inside the folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _hostile import (
    assert_folder_consistent,
    assert_ok_or_refused,
    assert_refused,
    cli_env,
    command,
    edit_manifest,
    invoke,
    sha256,
)

USER_FILES = {"model.x.onnx": b"user onnx, not deploykit's", "model.y.engine": b"user engine",
              "model.trt": b"user trt plan"}


def test_user_files_in_plain_out_folder_kept(lenet_ckpt, tmp_path, digit_images):
    """`export --out D`, D holding files named like artifacts but no deploykit.json: refuse or keep them."""
    out = tmp_path / "D"
    out.mkdir()
    for name, data in USER_FILES.items():
        (out / name).write_bytes(data)
    result = invoke("export", lenet_ckpt, "--out", out, "--data", digit_images)
    assert_ok_or_refused(result)
    for name, data in USER_FILES.items():
        assert (out / name).is_file() and (out / name).read_bytes() == data, f"export deleted the user's {name}"


def test_reexport_keeps_unrelated_files(retrained, digit_images, manifest_of):
    """Re-exporting into an export folder removes only what the old deploykit.json listed."""
    export_copy, ckpt = retrained
    keep = {"notes.txt": b"my notes", "bench.json": b'{"host": {}, "results": []}', "model.z.onnx": b"mine",
            "model.fp32.engine": b"my engine, not in the manifest"}
    for name, data in keep.items():
        (export_copy / name).write_bytes(data)
    result = invoke("export", ckpt, "--out", export_copy, "--data", digit_images)
    assert result.code == 0, result.describe()
    for name, data in keep.items():
        assert (export_copy / name).is_file() and (export_copy / name).read_bytes() == data, \
            f"re-export deleted {name}, which the old manifest did not list"
    assert_folder_consistent(export_copy)
    assert manifest_of(export_copy)["model"]["class_names"][0] == "a"


# -- kills and Ctrl-C during a re-export -------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict:
    """Name -> (inode, size, mtime) of each entry; {} while the folder is absent (mid-swap)."""
    out = {}
    try:
        for p in folder.iterdir():
            st = p.lstat()
            out[p.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        pass
    return out


def _start(ckpt, out, data, cwd):
    return subprocess.Popen(command("export", ckpt, "--out", out, "--data", data), cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


KILLS = [("SIGKILL", "1.5s"), ("SIGINT", "3s"), ("SIGKILL", "first-change"), ("SIGKILL", "onnx-replaced"),
         ("SIGINT", "onnx-replaced")]


@pytest.mark.parametrize("sig,when", KILLS, ids=[f"{s}-{w}" for s, w in KILLS])
def test_killed_reexport_leaves_whole_folder(sig, when, retrained, digit_images, tmp_path):
    """Kill / Ctrl-C a re-export at a point; the folder is the old export or the new one, whole."""
    export_copy, ckpt = retrained
    (export_copy / "notes.txt").write_text("mine")
    old_onnx = sha256(export_copy / "model.onnx")
    before = _snapshot(export_copy)
    siblings = set(os.listdir(tmp_path))
    proc = _start(ckpt, export_copy, digit_images, tmp_path)
    start = time.monotonic()
    fired = None
    while proc.poll() is None and time.monotonic() - start < 120:
        elapsed = time.monotonic() - start
        if when.endswith("s"):
            due = elapsed >= float(when[:-1])
        elif when == "first-change":  # a file written or replaced in the folder, or a staging folder beside it
            due = _snapshot(export_copy) != before or set(os.listdir(tmp_path)) - siblings
        else:  # model.onnx in the folder is no longer the old one
            due = _snapshot(export_copy).get("model.onnx") != before["model.onnx"]  # swapped: kill right after
        if due:
            fired = elapsed
            os.killpg(proc.pid, getattr(signal, sig)) if sig == "SIGKILL" else proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    manifest = assert_folder_consistent(export_copy)
    names = manifest["model"]["class_names"]
    if sha256(export_copy / "model.onnx") == old_onnx:
        assert names[0] == "0", "old model.onnx under the new manifest"
    else:
        assert names[0] == "a", "new model.onnx under the old manifest"
    assert (export_copy / "notes.txt").read_text() == "mine"
    assert fired is not None or proc.returncode == 0, f"export ended with {proc.returncode} before the kill"


def test_concurrent_exports_one_wins(lenet_ckpt, lenet_ckpt_b, digit_images, tmp_path):
    """Two exports into one --out at once: at most one succeeds, the other says so in one line (a lock)."""
    out = tmp_path / "D"
    procs = [_start(ckpt, out, digit_images, tmp_path) for ckpt in (lenet_ckpt, lenet_ckpt_b)]
    results = []
    for proc in procs:
        out_b, err_b = proc.communicate(timeout=240)
        results.append((proc.returncode, out_b.decode(errors="replace") + err_b.decode(errors="replace")))
    codes = [code for code, _ in results]
    assert codes.count(0) <= 1, f"both concurrent exports into {out} exited 0"
    for code, text in results:
        assert "Traceback" not in text, text
        if code != 0:
            lines = [line for line in text.splitlines() if line.startswith("error:")]
            assert code in (1, 2, 3, 4) and len(lines) == 1, f"exit {code}: {text[-2000:]}"
            # refused because of the other export (its lock, or its finished export of another model)
            assert any(w in lines[0].lower() for w in ("lock", "another", "in progress", "busy")), lines[0]
    assert_folder_consistent(out, allow_absent=True)


@pytest.mark.parametrize("corruption", ["random-bytes", "truncated"])
def test_failed_export_creates_nothing(corruption, lenet_ckpt, tmp_path):
    bad = tmp_path / "bad.pth"
    data = lenet_ckpt.read_bytes()
    bad.write_bytes(os.urandom(4096) if corruption == "random-bytes" else data[: len(data) // 2])
    out = tmp_path / "new" / "D"
    result = invoke("export", bad, "--out", out)
    assert_refused(result)
    assert not out.exists(), f"a failed export left {out} behind"
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir()), \
        f"a failed export left {sorted(os.listdir(tmp_path / 'new'))}"


# -- an artifact that differs from the manifest's sha256 ----------------------------------------------------------
READERS = ["predict", "verify", "bench", "report"]


def _read_folder(cmd, folder, image, data):
    if cmd == "predict":
        return invoke("predict", folder, image)
    if cmd == "verify":
        return invoke("verify", folder, "--data", data)
    if cmd == "bench":
        return invoke("bench", folder, "--backends", "ort", "--precisions", "fp32", "--warmup", "0", "--iters", "2")
    return invoke("report", folder)


@pytest.mark.parametrize("cmd", READERS)
def test_replaced_artifact_refused(cmd, export_copy, other_export, image, digit_images):
    """model.onnx replaced by another valid ONNX: one line that says the bytes differ / to re-export."""
    shutil.copy(other_export / "model.onnx", export_copy / "model.onnx")
    result = _read_folder(cmd, export_copy, image, digit_images)
    line = assert_refused(result)
    assert any(w in line.lower() for w in ("sha256", "re-export", "modified", "tamper", "does not match")), line


# -- artifact paths in the manifest must stay inside the folder ---------------------------------------------------
ESCAPES = ["dotdot", "absolute", "symlink"]


def _escape(kind, export_copy, tmp_path):
    outside = tmp_path / "outside"  # the same model, outside the folder: only the path is wrong
    shutil.copytree(export_copy, outside)
    target = outside / "model.onnx"
    if kind == "dotdot":
        path = os.path.relpath(target, export_copy)
    elif kind == "absolute":
        path = str(target)
    else:
        (export_copy / "model.onnx").unlink()
        (export_copy / "model.onnx").symlink_to(target)
        path = "model.onnx"

    def patch(data):
        data["artifacts"][0]["path"] = path
        data["artifacts"][0]["sha256"] = sha256(target)

    edit_manifest(export_copy, patch)


@pytest.mark.parametrize("cmd", ["predict", "verify"])
@pytest.mark.parametrize("kind", ESCAPES)
def test_artifact_path_outside_folder_refused(kind, cmd, export_copy, tmp_path, image, digit_images):
    """Artifact paths "../x", absolute, or a symlink out of the folder are refused (not followed)."""
    _escape(kind, export_copy, tmp_path)
    result = _read_folder(cmd, export_copy, image, digit_images)
    assert_refused(result)


# -- issue 22, class 2: export replaces or removes only the bytes the previous manifest recorded ------------------
def _user_bytes_case(case: str, folder: Path) -> tuple[str, bytes, tuple]:
    """Plant a file deploykit did not write where a re-export would replace or remove it; return (name, bytes,
    extra export flags)."""
    if case == "unlisted-name-the-export-writes":  # the user's own model.fp16.onnx, then export --fp16
        name, extra = "model.fp16.onnx", ("--fp16",)
    elif case == "listed-bytes-changed-replaced":  # model.onnx edited after export
        name, extra = "model.onnx", ()
    else:  # "listed-bytes-changed-removed": listed, then changed; the re-export does not make it
        name, extra = "model.int8-cpu.onnx", ()
        (folder / name).write_bytes(b"what deploykit wrote")
        edit_manifest(folder, lambda d: d["artifacts"].append(
            {"path": name, "precision": "int8-cpu", "sha256": sha256(folder / name), "bytes": 20}))
    data = b"the user's own bytes"
    (folder / name).write_bytes(data)
    return name, data, extra


@pytest.mark.parametrize("case", ["unlisted-name-the-export-writes", "listed-bytes-changed-replaced",
                                  "listed-bytes-changed-removed", "empty-out"])
def test_export_never_replaces_bytes_it_did_not_write(case, export_copy, lenet_ckpt, tmp_path, monkeypatch):
    """Refused with one line naming the file; with --force the file is kept under another name, never deleted."""
    if case == "empty-out":
        monkeypatch.chdir(tmp_path)
        before = sorted(os.listdir(tmp_path))
        result = invoke("export", lenet_ckpt, "--out", "", "--no-verify")
        assert_refused(result)
        assert result.code == 2 and sorted(os.listdir(tmp_path)) == before, result.describe()
        return
    name, data, extra = _user_bytes_case(case, export_copy)
    result = invoke("export", lenet_ckpt, "--out", export_copy, "--no-verify", *extra)
    assert_refused(result, mention=name)
    assert (export_copy / name).read_bytes() == data
    forced = invoke("export", lenet_ckpt, "--out", export_copy, "--no-verify", "--force", *extra)
    assert forced.code == 0, forced.describe()
    kept = [p for p in export_copy.iterdir() if p.is_file() and p.read_bytes() == data]
    assert kept and kept[0].name != name, f"--force lost the user's {name}: {sorted(os.listdir(export_copy))}"
    assert_folder_consistent(export_copy)


# -- issue 22, class 3: the lock beside --out is never followed, truncated or taken from someone else ------------
@pytest.mark.parametrize("planted", ["symlink", "dangling-symlink", "hard-link", "foreign-file"])
def test_lock_path_not_followed(planted, lenet_ckpt, tmp_path):
    from deploykit.folder import lock_path

    out = tmp_path / "out"
    target = tmp_path / "precious.txt"
    target.write_bytes(b"the user's data\n" * 4)
    lock = lock_path(out)
    if planted == "symlink":
        os.symlink(target, lock)
    elif planted == "dangling-symlink":
        os.symlink(tmp_path / "created-through-the-link", lock)
    elif planted == "hard-link":
        os.link(target, lock)
    else:
        lock.write_bytes(b"not a pid\n")
    result = invoke("export", lenet_ckpt, "--out", out, "--no-verify")
    assert_refused(result, mention="lock")
    assert target.read_bytes() == b"the user's data\n" * 4, "the lock wrote through a planted file"
    assert not (tmp_path / "created-through-the-link").exists() and os.path.lexists(lock)
    assert not out.exists()


# -- issue 22, class 7: every interrupt ends as `interrupted`, exit 130 -- never an exporter error or a crash ------
INTERRUPTS = [("SIGTERM", "onnx-step"), ("SIGINT", "onnx-step+2s"), ("SIGTERM", "first-change"),
              ("SIGINT", "first-change")]


@pytest.mark.parametrize("sig,when", INTERRUPTS, ids=[f"{s}-{w}" for s, w in INTERRUPTS])
def test_interrupt_ends_as_interrupted(sig, when, retrained, digit_images, tmp_path):
    """SIGTERM/SIGINT while torch exports the ONNX (a staging folder has appeared beside --out) or at the moment
    the folder's first file changes: `interrupted`, exit 130 (or the export had already finished: 0), the folder
    whole, never SIGSEGV or torch's exporter error."""
    export_copy, ckpt = retrained
    before = _snapshot(export_copy)
    siblings = set(os.listdir(tmp_path))
    proc = _start(ckpt, export_copy, digit_images, tmp_path)
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < 120:
        due = (set(os.listdir(tmp_path)) - siblings) if when.startswith("onnx-step") else \
            _snapshot(export_copy) != before
        if due:
            time.sleep(2.0 if when.endswith("+2s") else 0.0)  # inside torch's exporter: it wraps or swallows it
            proc.send_signal(getattr(signal, sig))
            break
        time.sleep(0.002)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    text = (out + err).decode(errors="replace")
    assert proc.returncode in (0, 130), f"exit {proc.returncode}:\n{text[-2000:]}"
    if proc.returncode == 130:
        assert text.strip().splitlines()[-1] == "interrupted" and "error:" not in text, text[-2000:]
    assert_folder_consistent(export_copy)
