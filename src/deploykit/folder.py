"""The export folder as a transaction.

An export builds everything in a staging folder beside ``--out`` and swaps it in only when every file is written,
so a kill, Ctrl-C, full disk or error at any point leaves either the old export intact or the new one whole -- never
a mix, never temporary files inside the folder. A lock beside the folder refuses a second export (or build) into
it while one runs. Only files that the previous ``deploykit.json`` lists are replaced; anything else the user keeps
in the folder (notes, bench.json, plots) is carried over into the new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from deploykit.errors import InputError
from deploykit.files import ensure_writable_dir, umask
from deploykit.manifest import MANIFEST_NAME, Manifest

STAGING_TAG = ".deploykit-staging-"
LOCK_TAG = ".deploykit-lock"
CACHE_GLOB = "calib-*.json"  # calibration caches: reused by a re-export, validated when read


def _real(folder: Path) -> Path:
    """``folder`` as an absolute, normalised path (``.``, ``x/..`` and the like name the folder they mean)."""
    path = Path(os.path.abspath(folder))
    if not path.name:
        raise InputError(f"--out {folder} is the file system root; choose a folder for the export")
    return path


def lock_path(folder: Path) -> Path:
    folder = _real(folder)
    return folder.parent / f".{folder.name}{LOCK_TAG}"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "export") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a lock file beside it) or refuse at once with one line."""
    path = lock_path(folder)
    ensure_writable_dir(path.parent, flag="--out")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot create the lock file {path}: {exc.strerror}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(f"another deploykit {what} is writing {folder} right now; wait for it to finish, "
                             "or choose another --out") from None
        # the holder before us may have removed the file after we opened it: lock the file that is there now
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a CI timeout) unwinds like Ctrl-C, so the staging folder is removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def previous_export(out: Path) -> Manifest | None:
    """The export already in ``out`` (None for a missing or empty folder). A folder that holds other files but no
    deploykit export is refused: deploykit never replaces files it did not write."""
    out = Path(out)
    if not out.exists():
        return None
    if out.is_symlink() or not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder; choose another --out")
    entries = [p for p in out.iterdir()]
    if not entries:
        return None
    if not (out / MANIFEST_NAME).is_file():
        shown = ", ".join(sorted(p.name for p in entries)[:3])
        raise InputError(f"--out {out} already holds files that are not a deploykit export ({shown}"
                         f"{', ...' if len(entries) > 3 else ''}); choose an empty or new --out")
    try:
        return Manifest.load(out)
    except InputError as exc:
        raise InputError(f"--out {out} holds a damaged export ({exc}); move it away or choose another --out") from None


def _stale_staging(out: Path) -> list[Path]:
    return [p for p in out.parent.glob(f".{out.name}{STAGING_TAG}*") if p.is_dir() and not p.is_symlink()]


@contextlib.contextmanager
def staged_export(out: Path) -> Iterator[tuple[Path, Manifest | None]]:
    """Yield ``(staging folder, previous manifest)``; on success, swap the staging folder in as ``out``.

    The caller holds :func:`folder_lock`. Files the previous manifest lists (and the manifest itself) are left out
    of the new folder; every other file in ``out`` is carried over (hard-linked, or copied). Calibration caches are
    seeded into the staging folder so a re-export reuses them.
    """
    shown, out = Path(out), _real(out)
    previous = previous_export(shown)
    for stale in _stale_staging(out):  # left by a killed export; we hold the lock, so no one else owns them
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_TAG}", dir=out.parent))
    except OSError as exc:
        raise InputError(f"cannot write next to {out}: {exc.strerror}; choose another --out") from None
    try:
        os.chmod(staging, 0o777 & ~umask())
        if previous is not None:
            for cache in out.glob(CACHE_GLOB):
                if cache.is_file() and not cache.is_symlink():
                    _link_or_copy(cache, staging / cache.name)
        yield staging, previous
        _drop_unused_caches(staging)
        _carry_user_files(out, staging, previous)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _drop_unused_caches(staging: Path) -> None:
    """Where the new export calibrated, the calibration caches its manifest does not name (another --calib-method,
    other images) are not kept: a re-export that calibrates otherwise leaves only its own. An export without INT8
    keeps them all, for the next one that calibrates. (Before the user's files are carried over, so they are not
    carried either.)"""
    import json

    try:
        record = json.loads((staging / MANIFEST_NAME).read_text())
        used = {((a.get("details") or {}).get("calibration") or {}).get("cache") for a in record.get("artifacts", [])}
    except (OSError, ValueError, AttributeError):
        return  # no readable manifest: leave the folder's caches as they were
    used.discard(None)
    if not used:
        return
    for cache in staging.glob(CACHE_GLOB):
        if cache.name not in used:
            cache.unlink(missing_ok=True)


def _carry_user_files(out: Path, staging: Path, previous: Manifest | None) -> None:
    if previous is None:
        return
    ours = {a["path"] for a in previous.artifacts} | {MANIFEST_NAME}
    for path in out.iterdir():
        if path.name in ours or (staging / path.name).exists() or (path.match(CACHE_GLOB) and path.is_file()
                                                                         and not path.is_symlink()):
            continue  # a cache: seeded above, and kept there unless _drop_unused_caches dropped it
        if path.is_dir() and not path.is_symlink():
            shutil.copytree(path, staging / path.name, symlinks=True)
        else:
            _link_or_copy(path, staging / path.name)


def _link_or_copy(src: Path, dest: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dest)
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _swap_in(staging: Path, out: Path) -> None:
    """Make ``staging`` the folder ``out`` in one step where the OS allows (renameat2 RENAME_EXCHANGE on Linux);
    ``staging`` then holds the old content, which the caller removes."""
    if not out.exists():
        os.rename(staging, out)
        return
    if not any(out.iterdir()):
        # an empty folder (perhaps the current one: swapping it would strand a shell inside it): move the files in,
        # the manifest last, so the folder is never a manifest over missing files
        names = sorted(p.name for p in staging.iterdir())
        for name in [n for n in names if n != MANIFEST_NAME] + [n for n in names if n == MANIFEST_NAME]:
            os.rename(staging / name, out / name)
        return
    cwd = os.getcwd()
    inside = cwd == str(out) or cwd.startswith(str(out) + os.sep)
    if _exchange(staging, out):
        if inside:  # our own working folder was the old export: step into the new one at the same path
            os.chdir(cwd if os.path.isdir(cwd) else out)
        return
    # no atomic exchange here: two renames; the window between them leaves the old folder intact beside
    aside = out.parent / f".{out.name}{STAGING_TAG}old-{os.getpid()}"
    os.rename(out, aside)
    os.rename(staging, out)
    os.rename(aside, staging)
    if inside:
        os.chdir(cwd if os.path.isdir(cwd) else out)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # the filesystem cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))
