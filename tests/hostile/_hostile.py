"""Helpers for the hostile suite: run deploykit as a user would and judge the outcome against issue 10's contract.

A hostile case is *clean* when deploykit either does the right thing or refuses with one line:
non-zero exit (1 user error, 2 usage, 3 missing dependency, 4 out of tolerance), exactly one line starting with
``error:``, no ``Traceback``, no ``internal error`` (exit 70 is the safety net, not a fix: a failure here).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def _src() -> Path:
    """The sources the in-process runs use (PYTHONPATH=src), so subprocess runs test the same deploykit."""
    import deploykit

    return Path(deploykit.__file__).resolve().parents[1]


SRC = _src()
REFUSAL_CODES = (1, 2, 3, 4)
INTERNAL = 70


@dataclass
class Outcome:
    code: int
    output: str  # stdout + stderr
    stdout: str
    exception: BaseException | None = None  # CliRunner only: an exception that escaped the app
    seconds: float = 0.0

    def describe(self) -> str:
        exc = "" if self.exception is None else f"\nescaped exception: {type(self.exception).__name__}: {self.exception}"
        return f"exit {self.code} after {self.seconds:.1f} s{exc}\n--- output ---\n{self.output[-3000:]}"


# -- running ----------------------------------------------------------------------------------------------
def invoke(*args, env: dict[str, str] | None = None) -> Outcome:
    """In-process through Typer's CliRunner (fast); an escaped exception counts as a traceback."""
    from typer.testing import CliRunner

    from deploykit.cli import app

    runner = CliRunner(env={"COLUMNS": "250", **(env or {})})
    start = time.monotonic()
    result = runner.invoke(app, [str(a) for a in args])
    exc = result.exception
    if isinstance(exc, SystemExit):
        exc = None
    out = result.output
    try:
        stdout = result.stdout
    except ValueError:
        stdout = out
    return Outcome(result.exit_code, out, stdout, exc, time.monotonic() - start)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
                "OMP_NUM_THREADS": "1", "COLUMNS": "250", "PYTHONUNBUFFERED": "1"})
    env.pop("DEPLOYKIT_DEBUG", None)
    env.update(extra or {})
    return env


def command(*args) -> list[str]:
    return [sys.executable, "-m", "deploykit", *[str(a) for a in args]]


_LAUNCH = """import os, resource, sys
memory, fsize = int(sys.argv[1]), int(sys.argv[2])
if memory:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
if fsize:
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))  # Python ignores SIGXFSZ: writes fail with EFBIG
os.execv(sys.argv[3], sys.argv[3:])
"""


def run(*args, cwd: Path, timeout: float = 120, memory_gb: float | None = None,
        max_file_bytes: int | None = None) -> Outcome:
    """In a subprocess, as a user runs it. ``memory_gb`` caps the address space (an unbounded allocation then fails
    instead of taking the machine down); ``max_file_bytes`` makes any larger write fail as a full disk would; a run
    past ``timeout`` is killed and reported as exit -9."""
    start = time.monotonic()
    argv = command(*args)
    if memory_gb or max_file_bytes:
        argv = [sys.executable, "-c", _LAUNCH, str(int((memory_gb or 0) * (1 << 30))), str(max_file_bytes or 0),
                *argv]
    proc = subprocess.Popen(argv, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[hostile suite: killed after {timeout} s]".encode()
    text_out = out.decode(errors="replace")
    return Outcome(proc.returncode, text_out + err.decode(errors="replace"), text_out,
                   None, time.monotonic() - start)


# -- judging ----------------------------------------------------------------------------------------------
def error_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.output.splitlines() if line.startswith("error:")]


def assert_no_traceback(outcome: Outcome) -> None:
    assert outcome.exception is None, f"exception escaped (a traceback for the user): {outcome.describe()}"
    assert "Traceback" not in outcome.output, f"traceback printed: {outcome.describe()}"
    assert outcome.code != INTERNAL and "internal error:" not in outcome.output, \
        f"caught only by the catch-all (exit 70), no clear message of its own: {outcome.describe()}"


def assert_refused(outcome: Outcome, *, mention: str | tuple[str, ...] | None = None,
                   not_mention: str | None = None) -> str:
    """Non-zero exit with one `error:` line (Typer usage errors, exit 2, print their own box); return the line."""
    assert_no_traceback(outcome)
    assert outcome.code in REFUSAL_CODES, f"expected a refusal (exit 1-4): {outcome.describe()}"
    if outcome.code == 2 and not error_lines(outcome):
        return outcome.output  # Typer's usage box
    lines = error_lines(outcome)
    assert len(lines) == 1, f"expected exactly one 'error:' line, got {len(lines)}: {outcome.describe()}"
    line = lines[0]
    if mention is not None:
        words = (mention,) if isinstance(mention, str) else mention
        assert any(w.lower() in line.lower() for w in words), f"the error should mention {words}: {line}"
    if not_mention is not None:
        assert not_mention.lower() not in line.lower(), f"the error should not say {not_mention!r}: {line}"
    return line


def assert_ok_or_refused(outcome: Outcome) -> None:
    """Either it worked (exit 0) or it refused cleanly."""
    if outcome.code == 0:
        assert_no_traceback(outcome)
    else:
        assert_refused(outcome)


def _reject_constant(name: str):
    raise ValueError(f"non-JSON constant {name}")


def strict_json(text: str):
    """json.loads that rejects NaN / Infinity (not JSON)."""
    return json.loads(text, parse_constant=_reject_constant)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_folder_consistent(folder: Path, *, allow_absent: bool = False) -> dict | None:
    """deploykit.json is strict JSON and every artifact it lists is inside the folder with the recorded sha256;
    no temporary file or folder is left inside (a lock file may stay after a SIGKILL)."""
    folder = Path(folder)
    if allow_absent and not folder.exists():
        return None
    leftovers = [p.name for p in folder.iterdir() if "lock" not in p.name.lower() and (
        p.name.endswith(".tmp") or p.is_dir() or p.name.startswith((".model", "tmp")) or "stag" in p.name.lower())]
    assert not leftovers, f"temporary files/folders left in {folder}: {leftovers}"
    manifest_path = folder / "deploykit.json"
    if allow_absent and not manifest_path.exists() and not any(folder.iterdir()):
        return None
    assert manifest_path.is_file(), f"{folder} has files but no deploykit.json: {sorted(os.listdir(folder))}"
    manifest = strict_json(manifest_path.read_text())
    for art in manifest["artifacts"]:
        path = folder / art["path"]
        assert path.resolve().parent == folder.resolve(), f"artifact outside the folder: {art['path']}"
        assert path.is_file(), f"manifest lists {art['path']} but it is missing"
        assert sha256(path) == art["sha256"], f"{art['path']} does not match the manifest's sha256 (mixed export)"
    return manifest


# -- building hostile inputs ------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs a shell command (here: create a marker file)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def payload_bytes(marker: Path) -> bytes:
    """A torch.save archive whose unpickling creates ``marker``."""
    import torch

    buf = io.BytesIO()
    torch.save({"x": Payload(f"touch {marker}")}, buf)
    return buf.getvalue()


def rewrite_zip(src: Path, dst: Path, replace: dict) -> Path:
    """Copy a zip archive, passing the bytes of each member whose name ends with a key through its function."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, fn in replace.items():
                if info.filename.endswith(suffix):
                    data = fn(data)
            zout.writestr(info, data)
    return dst


def copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(folder: Path, fn) -> Path:
    """Apply ``fn(dict) -> dict | None`` to deploykit.json (written with json.dumps, so NaN may be in it)."""
    path = Path(folder) / "deploykit.json"
    data = json.loads(path.read_text())
    data = fn(data) or data
    path.write_text(json.dumps(data, indent=1))
    return path


def deep_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def lenet_checkpoint(path: Path, seed: int, class_names: list[str]) -> Path:
    import torch

    from deploykit.models.checkpoint import save_checkpoint
    from deploykit.models.registry import build_model, get_spec
    from deploykit.preprocess import Preprocess

    spec = get_spec("lenet")
    pre = Preprocess(channels=1, height=28, width=28, mean=tuple(spec.mean), std=tuple(spec.std))
    torch.manual_seed(seed)
    model = build_model("lenet", num_classes=10).eval()
    save_checkpoint(path, model, arch="lenet", num_classes=10, preprocess=pre, class_names=class_names)
    return path
