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
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from deploykit.errors import InputError, interrupt, interrupt_requested
from deploykit.files import ensure_writable_dir, sha256_file, umask
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


_LOCK_TEXT = re.compile(rb"\d{0,10}\n?")  # what deploykit writes into its lock file: its PID (empty while created)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "export") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a lock file beside it) or refuse at once with one line.

    The lock file is created without following links (``O_CREAT | O_EXCL | O_NOFOLLOW``). One that is already there
    is used only when it is a plain file holding what deploykit writes into it (a PID: left by a killed run, or
    held by a running one, which ``flock`` tells); a link, a folder or any other file there is someone else's and
    is refused, never followed, truncated or removed."""
    path = lock_path(folder)
    ensure_writable_dir(path.parent, flag="--out")
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o644)
        except FileExistsError:
            fd = _open_existing_lock(path, nofollow)
            if fd is None:
                continue  # removed meanwhile by its holder: create it again
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
            if os.lstat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)  # deploykit's own lock file (created above, or recognised by its content)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        os.close(fd)


def _open_existing_lock(path: Path, flags: int) -> int | None:
    """An fd on the lock file already at ``path`` when it is deploykit's, None when it vanished; else refuse."""
    foreign = (f"{path} exists and is not a lock file deploykit created ({{}}); remove it if it is not yours, or "
               "choose another --out")
    try:
        fd = os.open(path, os.O_RDWR | flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise InputError(foreign.format(why)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > 16 or \
                not _LOCK_TEXT.fullmatch(os.pread(fd, 17, 0)):
            raise InputError(foreign.format("a hard link" if stat.S_ISREG(st.st_mode) and st.st_nlink != 1 else
                                            "someone else's file"))
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a CI timeout) and Ctrl-C unwind as KeyboardInterrupt (``errors.interrupt``), so the staging
    folder is removed on the way out; a second signal during that cleanup is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if not interrupt_requested():  # after an interrupt the signals stay ignored until the command has ended
            for sig, handler in previous.items():
                signal.signal(sig, handler)


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
def staged_export(out: Path, *, force: bool = False,
                  notes: list[str] | None = None) -> Iterator[tuple[Path, Manifest | None]]:
    """Yield ``(staging folder, previous manifest)``; on success, swap the staging folder in as ``out``.

    The caller holds :func:`folder_lock`. Files the previous manifest lists with the bytes it recorded (and the
    manifest itself) are deploykit's: left out of the new folder, so replaced or removed. Any other file in ``out``
    is the user's and is carried over (hard-linked, or copied) -- unless the new export writes a file of that name,
    or it is a listed artifact whose bytes changed since: then the export is refused naming it, or with ``force``
    the file is kept under another name (``notes`` says which). Calibration caches are seeded into the staging
    folder so a re-export reuses them.
    """
    shown, out = Path(out), _real(out)
    previous = previous_export(shown)
    ours = _ours(out, previous)
    if previous is not None and not force:
        changed = sorted({name for name, _ in _listed_files(previous)} - ours)
        if changed:  # fail before minutes of export work
            raise _foreign(shown, changed[0], "its bytes are not the ones deploykit.json recorded")
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
                    ours.add(cache.name)  # deploykit's own cache (checked when read): a re-export may rewrite it
        yield staging, previous
        _drop_unused_caches(staging)
        _carry_user_files(shown, out, staging, previous, ours, force, notes)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ours(out: Path, previous: Manifest | None) -> set[str]:
    """The names in ``out`` deploykit may replace or remove: the manifest, and each artifact it lists whose file
    still holds the bytes it recorded (a plain file, not a link)."""
    if previous is None:
        return set()
    names = {MANIFEST_NAME}
    for name, sha256 in _listed_files(previous):
        path = out / name
        try:
            if not path.is_symlink() and path.is_file() and sha256_file(path) == sha256:
                names.add(name)
        except OSError:
            pass
    return names


def _listed_files(manifest: Manifest) -> list[tuple[str, str]]:
    """(name, sha256) of every file a manifest records: the artifacts, the external-data files of ONNX ones and the
    evidence files (the verification images and PyTorch's logits)."""
    evidence = manifest.evidence
    recorded = [(f["path"], f["sha256"]) for f in evidence["files"].values()] if evidence is not None else []
    return [(name, sha256) for a in manifest.artifacts for name, sha256, _ in a.listed_files] + recorded


def _foreign(out: Path, name: str, why: str) -> InputError:
    return InputError(f"{out / name} is not a file this export may replace ({why}); move it away, or pass --force "
                      "to keep it under another name")


def _aside(staging: Path, name: str) -> str:
    """A free name beside ``name`` for a file --force keeps: ``name.kept``, ``name.kept-2``..."""
    candidate, n = f"{name}.kept", 1
    while os.path.lexists(staging / candidate):
        n += 1
        candidate = f"{name}.kept-{n}"
    return candidate


def _drop_unused_caches(staging: Path) -> None:
    """Where the new export calibrated, the calibration caches its manifest does not name (another --calib-method,
    other images) are not kept: a re-export that calibrates otherwise leaves only its own. An export without INT8
    keeps them all, for the next one that calibrates. (Before the user's files are carried over, so they are not
    carried either.)"""
    try:
        record = Manifest.load(staging)
    except InputError:
        return  # no readable manifest: leave the folder's caches as they were
    used = {((a.details or {}).get("calibration") or {}).get("cache") for a in record.artifacts}
    used.discard(None)
    if not used:
        return
    for cache in staging.glob(CACHE_GLOB):
        if cache.name not in used:
            cache.unlink(missing_ok=True)


def _carry_user_files(shown: Path, out: Path, staging: Path, previous: Manifest | None, ours: set[str],
                      force: bool, notes: list[str] | None) -> None:
    if previous is None:
        return
    listed = {name for name, _ in _listed_files(previous)}
    for path in sorted(out.iterdir()):
        name = path.name
        if name in ours:
            continue
        target = staging / name
        if os.path.lexists(target) and not _same_file(path, target):
            why = "the new export writes a file of that name, and deploykit.json does not list this one"
        elif name in listed:
            why = "its bytes are not the ones deploykit.json recorded"
        else:
            why = None
        if why is not None:
            if not force:
                raise _foreign(shown, name, why)
            target = staging / _aside(staging, name)
            if notes is not None:
                notes.append(f"kept {shown / name} as {target.name} ({why}; --force)")
        elif os.path.lexists(target):
            continue  # the same file (a seeded calibration cache)
        if path.is_dir() and not path.is_symlink():
            shutil.copytree(path, target, symlinks=True)
        else:
            _link_or_copy(path, target)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


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
