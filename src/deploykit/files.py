"""Atomic file output and hashing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from deploykit.errors import InputError


def ensure_writable_dir(path: Path, flag: str | None = None) -> Path:
    """Create ``path`` (and parents) or explain why it cannot be written; ``flag`` names the option that chose it."""
    path = Path(path)
    hint = f"; choose another {flag}" if flag else ""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {path}: {exc.strerror or exc}{hint}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"output folder {path} is not writable{hint}")
    return path


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it over ``dest`` only if the block succeeds.

    An interrupted write never leaves a truncated ``dest`` behind. A destination that cannot be written raises
    InputError naming the path.
    """
    dest = Path(dest)
    ensure_writable_dir(dest.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file 0600; give the result the mode any new file gets here (0666 minus the umask), so an
    # export folder copied to a device or served by another user is readable there.
    os.chmod(tmp, 0o666 & ~umask())
    try:
        yield tmp
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _DISK_ERRORS:
            raise InputError(f"cannot write {dest}: {exc.strerror}; free some space or choose another folder") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def finite_json(obj: object) -> object:
    """``obj`` with every non-finite float replaced by None: what deploykit writes is strict JSON (no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps_strict(obj: object, **kwargs) -> str:
    """``json.dumps`` that never writes NaN/Infinity (non-finite numbers become null)."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def write_json_atomic(dest: Path, obj: object) -> None:
    write_bytes_atomic(dest, (dumps_strict(obj, indent=2, sort_keys=False) + "\n").encode())


MAX_JSON_BYTES = 64 << 20  # a manifest, cache or bench file is kilobytes; refuse to parse anything absurd


def read_json(path: Path, what: str) -> object:
    """Parse a JSON file deploykit reads (manifest, calibration cache, bench results): one-line InputError for a file
    that is unreadable, too large, not JSON, too deeply nested, or holds NaN/Infinity or absurd numbers."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise InputError(f"{path} is too large to be a {what} ({path.stat().st_size} bytes)")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a {what}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return parse_json(text, f"{path}", what)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value


def parse_json(text: str, where: str, what: str) -> object:
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise InputError(f"{where} is not a valid {what}: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not a valid {what}: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with more digits than Python parses
        raise InputError(f"{where} is not a valid {what}: {str(exc).splitlines()[0][:120]}") from None


def user_cache_dir() -> Path:
    """deploykit's cache folder: ``$DEPLOYKIT_CACHE_DIR``, else the platform's user cache dir (``$XDG_CACHE_HOME``
    or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows) + ``/deploykit``."""
    if os.environ.get("DEPLOYKIT_CACHE_DIR"):
        return Path(os.environ["DEPLOYKIT_CACHE_DIR"])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "deploykit"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
