"""The checks a file an export folder lists passes before deploykit reads it: a plain file inside the folder (no
symlink out of it) whose bytes match the recorded sha256 -- remembered by file identity so a second command does
not hash again -- and, for an ONNX graph, the external-data files it reads and no control flow."""

from __future__ import annotations

import re
from pathlib import Path

from deploykit.errors import InputError
from deploykit.files import read_json, sha256_file, user_cache_dir, write_json_atomic
from deploykit.manifest_schema import ARTIFACT_NAME, MANIFEST_NAME

_GRAPH_FACTS: dict[str, tuple[list[str], list[str]]] = {}


def _graph_facts(path: Path) -> tuple[list[str], list[str]]:
    """(external-data files, control-flow op types) of an ONNX file, read once per file identity in a process."""
    path = Path(path)
    key = _identity(path, path.stat())
    if key not in _GRAPH_FACTS:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise InputError(f"{path.name} is not a readable ONNX file ({type(exc).__name__}); re-export it") from None
        nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
        tensors = list(model.graph.initializer) + [a.t for n in nodes for a in n.attribute if a.HasField("t")]
        external = set()
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                location = next((e.value for e in tensor.external_data if e.key == "location"), "")
                if not re.fullmatch(ARTIFACT_NAME, location):
                    raise InputError(f"{path.name} reads a tensor from {location[:80]!r}, which is not a file beside "
                                     "it; re-export it")
                external.add(location)
        graphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        control = {n.op_type for n in nodes if any(a.type in graphs for a in n.attribute)}
        _GRAPH_FACTS[key] = (sorted(external), sorted(control))
    return _GRAPH_FACTS[key]


def external_data_of(path: Path) -> list[str]:
    """The external-data files an ONNX file reads its tensors from (``location`` of each external initializer or
    Constant), sorted; [] for a self-contained graph. A location that is not a plain name beside it is refused."""
    return _graph_facts(path)[0]


def check_graph(path: Path) -> None:
    """Refuse a graph with control flow (Loop, If, Scan: any op that carries a subgraph): no graph deploykit writes
    has one -- an image classifier's forward pass is a fixed sequence of ops -- and a Loop's trip count is data
    that can keep a runtime busy forever."""
    control = _graph_facts(path)[1]
    if control:
        raise InputError(f"{path.name} holds control flow ({', '.join(control)}), which no graph deploykit exports "
                         "contains; deploykit runs image classifiers exported with `deploykit export`")


def content_sha256(path: Path) -> str:
    """The sha256 of ``path``'s bytes, from the checked-files cache when this very file (same identity, ctime
    included) was hashed before -- e.g. by :meth:`Manifest.file` -- else computed."""
    path = Path(path)
    key = _identity(path, path.stat())
    known = _VERIFIED.get(key) or _known_hash(key)
    if known is None:
        known = sha256_file(path)
        _remember_hash(key, known)
    return known


# Hashing a 45 MB ResNet-18 graph takes ~60 ms, 4% of a whole `deploykit predict`. A file already checked is
# remembered by identity -- device, inode, size, mtime and ctime (ctime cannot be set back by a user: any write or
# rename of the file moves it) -- in the process and in the user's cache, so a second predict does not hash again.
_VERIFIED: dict[str, str] = {}
_CACHE_ENTRIES = 512


def _identity(path: Path, stat) -> str:
    return f"{path.resolve()}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"


def _hash_cache() -> Path:
    return user_cache_dir() / "verified-files.json"


def _known_hash(key: str) -> str | None:
    if key in _VERIFIED:
        return _VERIFIED[key]
    try:
        data = read_json(_hash_cache(), "hash cache")
    except InputError:
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _remember_hash(key: str, sha256: str) -> None:
    _VERIFIED[key] = sha256
    path = _hash_cache()
    try:
        data = read_json(path, "hash cache") if path.is_file() else {}
    except InputError:
        data = {}
    data = {k: v for k, v in (data.items() if isinstance(data, dict) else []) if isinstance(v, str)}
    data.pop(key, None)
    data[key] = sha256
    try:
        write_json_atomic(path, dict(list(data.items())[-_CACHE_ENTRIES:]))
    except (InputError, OSError):
        pass  # a read-only home (a device's service account) only costs the next run a hash


def checked_file(folder: Path, name: str, sha256: str | None, size: int | None = None) -> Path:
    """``folder/name`` after checking it is a plain file inside ``folder`` whose content has ``sha256``."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name \
            or "\x00" in name:
        raise InputError(f"{folder / MANIFEST_NAME} lists {name!r}, which is not a file name inside the folder; "
                         "re-run `deploykit export`")
    path = folder / name
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; an export folder holds its own files: re-run `deploykit export`")
    if not path.is_file():
        raise InputError(f"{path} is missing: the export folder is incomplete; re-run `deploykit export` (or "
                         "`deploykit build` for an engine)")
    stat = path.stat()
    if size is not None and stat.st_size != size:
        raise InputError(f"{path} does not match {MANIFEST_NAME} ({stat.st_size} bytes, the manifest says {size}); "
                         "changed since export: re-run `deploykit export`")
    if sha256 is None:
        return path
    key = _identity(path, stat)
    if _known_hash(key) != sha256:
        if sha256_file(path) != sha256:
            raise InputError(f"{path} does not match {MANIFEST_NAME} (sha256 differs): changed since export; "
                             "re-run `deploykit export`")
        _remember_hash(key, sha256)
    return path
