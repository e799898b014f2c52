"""``deploykit.json``: the export folder's sidecar manifest (source, input, preprocessing, artifacts, parity)."""

from __future__ import annotations

import platform
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from deploykit import schema as S
from deploykit.errors import InputError
from deploykit.files import read_json, sha256_file, user_cache_dir, write_json_atomic
from deploykit.preprocess import Preprocess

MANIFEST_NAME = "deploykit.json"
SCHEMA = "deploykit-manifest/1"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, key in (("deploykit", "deploykit"), ("torch", "torch"), ("torchvision", "torchvision"),
                      ("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxruntime-gpu", "onnxruntime"),
                      ("tensorrt", "tensorrt")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out.setdefault(key, None)
    return out


# -- schema: what a deploykit.json must hold before any of it is used (see deploykit.schema for why no library) --
MAX_CLASSES = 1_000_000
ARTIFACT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}"  # a plain file name inside the folder: no /, no .., no dotfile
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-cpu")
_SHA256 = S.text(64, r"[0-9a-f]{64}")
LABEL = S.text(256, printable=False)  # any text: printed literally (cli.render.literal, text.markdown_cell)


def _tensor(record: dict, where: str) -> None:
    S.get(record, "name", where, S.text(256))
    S.get(record, "shape", where, S.items(S.nullable(S.whole(1, 1 << 20)), 1, 8))
    S.get(record, "dtype", where, S.text(32))


def _artifact(record: dict, where: str) -> None:
    S.get(record, "path", where, S.text(128, ARTIFACT_NAME))
    S.get(record, "precision", where, S.one_of(PRECISIONS))
    S.get(record, "sha256", where, _SHA256)
    S.get(record, "bytes", where, S.whole(0, 1 << 50), optional=True)
    S.get(record, "parity", where, S.any_object, optional=True)
    S.get(record, "external_data", where, S.items(S.record(_external), 0, 4096), optional=True)


def _external(record: dict, where: str) -> None:
    S.get(record, "path", where, S.text(128, ARTIFACT_NAME))
    S.get(record, "sha256", where, _SHA256)
    S.get(record, "bytes", where, S.whole(0, 1 << 50), optional=True)


# -- the evidence the folder carries (deploykit.evidence writes and reads it) --
EVIDENCE_FORMAT = "deploykit-evidence/1"


def _file(record: dict, where: str) -> None:
    S.get(record, "path", where, S.text(128, ARTIFACT_NAME))
    S.get(record, "sha256", where, _SHA256)
    S.get(record, "bytes", where, S.whole(0, 1 << 40))


def validate_evidence(record: Any, where: str = "evidence") -> None:
    """The manifest's ``"evidence"`` record, as data from a file (:mod:`deploykit.schema`)."""
    S.obj(record, where)
    if record.get("format") != EVIDENCE_FORMAT:
        raise S.SchemaError(f"{where}.format", f"must be {EVIDENCE_FORMAT!r}")
    S.get(record, "n_images", where, S.whole(1, 1 << 24))
    S.get(record, "source", where, S.text(4096, printable=False))
    S.get(record, "selection", where, S.text(4096, printable=False), optional=True)
    S.get(record, "held_out", where, S.boolean, optional=True)  # null: not checked against a calibration set
    S.get(record, "domain", where, S.boolean, optional=True)
    S.get(record, "reference", where, S.text(64))
    S.get(record, "pixels_sha256", where, S.text(64, r"[0-9a-f]{64}"))
    files = S.get(record, "files", where, S.any_object)
    S.get(files, "logits", f"{where}.files", S.record(_file))
    for key in ("images", "labels"):
        S.get(files, key, f"{where}.files", S.record(_file), optional=True)


def _timings(value: Any, field: str) -> dict:
    """``{stage: seconds}`` (deploykit.timings)."""
    record = S.any_object(value, field)
    if len(record) > 256:
        raise S.SchemaError(field, f"{len(record)} stages, at most 256")
    for stage in record:
        S.text(64, r"[A-Za-z0-9_.+-]+")(stage, f"{field} (a stage name)")
        S.get(record, stage, field, S.number(0, 1e9))
    return record


def _manifest(data: dict, where: str) -> None:
    source = S.get(data, "source", where, S.any_object)
    S.get(source, "path", "source", S.text(4096, r"[^\x00]+", printable=False))  # any path a file system holds:
    # printed through text.printable, so a checkpoint named with an escape sequence re-reads its own manifest
    S.get(source, "sha256", "source", _SHA256, optional=True)
    S.get(source, "kind", "source", S.text(64), optional=True)
    S.get(source, "options", "source", S.any_object, optional=True)
    model = S.get(data, "model", where, S.any_object)
    n = S.get(model, "num_classes", "model", S.whole(1, MAX_CLASSES))
    S.get(model, "arch", "model", S.text(128), optional=True)
    names = S.get(model, "class_names", "model", S.items(LABEL, 1, MAX_CLASSES), optional=True)
    if names is not None and len(names) != n:
        raise S.SchemaError("model.class_names", f"{len(names)} names for {n} classes")
    if names is not None and len(set(names)) != len(names):
        raise S.SchemaError("model.class_names", f"names {next(x for x in names if names.count(x) > 1)!r} twice")
    S.get(model, "best_val_acc", "model", S.number(0, 100), optional=True)
    S.get(data, "input", where, S.record(_tensor))
    S.get(data, "output", where, S.record(_tensor))
    S.get(data, "preprocess", where, S.any_object)
    S.get(data, "opset", where, S.whole(1, 100), optional=True)
    S.get(data, "versions", where, S.any_object, optional=True)
    artifacts = S.get(data, "artifacts", where, S.items(S.record(_artifact)), optional=True) or []
    S.get(data, "timings", where, _timings, optional=True)
    paths = [a["path"] for a in artifacts]
    if len(set(paths)) != len(paths):
        raise S.SchemaError("artifacts", "the same file is listed twice")
    if data.get("evidence") is not None:
        validate_evidence(data["evidence"], "evidence")
        if set(paths) & {f["path"] for f in data["evidence"]["files"].values()}:
            raise S.SchemaError("evidence.files", "an artifact's name")


def validate_manifest(data: object, where: str) -> None:
    """Raise InputError naming ``where`` and the first bad field when ``data`` is not a usable manifest."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{where} is not a deploykit manifest ({SCHEMA}); re-run `deploykit export`")
    try:
        _manifest(data, "")
    except S.SchemaError as exc:
        raise InputError(f"{where}: {exc}; re-run `deploykit export`") from None
    try:
        Preprocess.from_dict(data["preprocess"])
    except InputError as exc:
        raise InputError(f"{where}: field preprocess: {exc}; re-run `deploykit export`") from None


@dataclass(frozen=True)
class Artifact(Mapping):
    """One file an export folder lists (an entry of ``deploykit.json``'s ``artifacts``), read by attribute.

    :meth:`from_json` / :meth:`to_json` round-trip the entry key for key and in order, unknown keys included
    (``extra``), so ``deploykit.json`` never changes by being read and written. The read-only mapping interface
    (``entry["path"]``) is the JSON view, kept for scripts and tests that hold the JSON shape; deploykit's own
    modules read the attributes."""

    path: str                                   # a file name inside the folder (ARTIFACT_NAME)
    precision: str                              # one of PRECISIONS
    sha256: str | None = None                   # None only for a bare ONNX file benched without a folder
    bytes: int | None = None
    parity: dict[str, Any] | None = None        # the verification verdict (`deploykit verify` / export)
    details: dict[str, Any] | None = None       # the precision stage's facts: target, remainder, calibration, ...
    batch: int | None = None                    # an engine built for one batch size
    engine: dict[str, Any] | None = None        # an engine's build facts (TensorRT, GPU, profile, source ONNX)
    external_data: list[dict[str, Any]] | None = None  # the files an ONNX keeps tensors in (path, sha256, bytes)
    tensorrt_ready: dict[str, Any] | None = None  # `deploykit check`'s verdicts per TensorRT target
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were
    keys_order: tuple[str, ...] = field(default=(), repr=False, compare=False)  # the JSON's key order

    _FIELDS = ("path", "precision", "sha256", "bytes", "parity", "details", "batch", "engine", "external_data",
               "tensorrt_ready")

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Artifact:
        """An entry as ``deploykit.json`` holds it (after :func:`validate_manifest`), or as a stage writes it."""
        if isinstance(record, Artifact):
            return record
        known = {k: record[k] for k in cls._FIELDS if k in record}
        return cls(**known, extra={k: v for k, v in record.items() if k not in cls._FIELDS},
                   keys_order=tuple(record))

    def to_json(self) -> dict[str, Any]:
        """The entry for ``deploykit.json``: the keys it was read with, in their order, then any set since."""
        out: dict[str, Any] = {}
        for key in self.keys_order:
            if key in self._FIELDS:
                out[key] = getattr(self, key)
            elif key in self.extra:
                out[key] = self.extra[key]
        for key in self._FIELDS:
            if key not in out and (key in ("path", "precision") or getattr(self, key) is not None):
                out[key] = getattr(self, key)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def replace(self, **changes: Any) -> Artifact:
        """A copy with ``changes`` (fields); a key it did not have goes last in the JSON, as a dict's would."""
        return replace(self, **changes)

    @property
    def kind(self) -> str | None:
        """``onnx`` or ``engine`` (from the file name: :func:`artifact_kind`)."""
        return artifact_kind(self.path)

    @property
    def target(self) -> str | None:
        """The runtime an INT8 graph was made for (``tensorrt``, ``onnxruntime-cpu``), as the precision stage
        recorded it; None for the others."""
        return (self.details or {}).get("target")

    @property
    def remainder(self) -> str | None:
        """The precision of an INT8 graph's non-INT8 part (``fp16`` / ``fp32``) where recorded, else None."""
        return (self.details or {}).get("remainder")

    @property
    def passed(self) -> bool | None:
        """The parity verdict: True / False, or None while unverified."""
        return (self.parity or {}).get("passed")

    @property
    def metrics(self) -> dict[str, Any]:
        return (self.parity or {}).get("metrics") or {}

    @property
    def listed_files(self) -> list[tuple[str, str, int | None]]:
        """(name, sha256, bytes) of the file and of each external-data file it reads."""
        return [(self.path, self.sha256, self.bytes)] + [(e["path"], e["sha256"], e.get("bytes"))
                                                         for e in self.external_data or ()]

    # the read-only JSON view
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

    __hash__ = None  # type: ignore[assignment]  # holds dicts


@dataclass
class Manifest:
    source: dict[str, Any]
    model: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    preprocess: dict[str, Any]
    opset: int | None
    versions: dict[str, Any] = field(default_factory=versions)
    artifacts: list[Artifact] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # export stage -> wall seconds (deploykit.timings)
    folder: Path | None = field(default=None, repr=False, compare=False)  # where it was loaded from / saved to

    def __post_init__(self) -> None:
        self.artifacts = [Artifact.from_json(a) for a in self.artifacts]

    @property
    def preprocessing(self) -> Preprocess:
        return Preprocess.from_dict(self.preprocess)

    @property
    def class_names(self) -> list[str] | None:
        return self.model.get("class_names")

    @property
    def evidence(self) -> dict[str, Any] | None:
        """The ``"evidence"`` record (checked by :func:`validate_evidence` on load), or None."""
        record = self.extra.get("evidence")
        return record if isinstance(record, dict) else None

    def artifact(self, path: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.path == path), None)

    def set_artifact(self, entry: Artifact | Mapping[str, Any]) -> Artifact:
        """Add or replace ``entry`` (listed last); an ONNX file that keeps tensors in external-data files beside it
        gets them listed (``external_data``: path, sha256, bytes), so they are checked as the artifact itself is."""
        entry = Artifact.from_json(entry)
        if self.folder is not None and entry.kind == "onnx" and "external_data" not in entry.to_json():
            refs = external_data_of(self.folder / entry.path)
            if refs:
                entry = entry.replace(external_data=[
                    {"path": r, "sha256": sha256_file(self.folder / r), "bytes": (self.folder / r).stat().st_size}
                    for r in refs])
        self.artifacts = [a for a in self.artifacts if a.path != entry.path] + [entry]
        return entry

    def update_artifact(self, path: str, **changes: Any) -> Artifact:
        """Change fields of the listed ``path`` in place (its position kept): a verdict, a check's result."""
        for i, entry in enumerate(self.artifacts):
            if entry.path == path:
                self.artifacts[i] = entry.replace(**changes)
                return self.artifacts[i]
        raise InputError(f"{path} is not listed in the manifest")

    def find(self, path: str | None = None, *, precision: str | None = None,
             kind: str | None = None) -> Artifact | None:
        """The first artifact with that file name, precision and kind (``onnx`` or ``engine``)."""
        for entry in self.artifacts:
            if path is not None and entry.path != path:
                continue
            if precision is not None and entry.precision != precision:
                continue
            if kind is not None and entry.kind != kind:
                continue
            return entry
        return None

    def file(self, entry: Artifact | str) -> Path:
        """The checked path of an artifact this manifest lists: a regular file inside the folder (no symlink out of
        it) whose bytes match the recorded sha256. Anything else is a one-line InputError saying to re-export."""
        if self.folder is None:
            raise InputError("this manifest was not loaded from an export folder")
        if isinstance(entry, str):
            name = entry
            entry = self.artifact(name)
            if entry is None:
                raise InputError(f"{name} is not listed in {self.folder / MANIFEST_NAME}")
        entry = Artifact.from_json(entry)
        path = checked_file(self.folder, entry.path, entry.sha256, entry.bytes)
        if entry.kind == "onnx":
            check_graph(path)
            listed = [e["path"] for e in entry.external_data or []]
            refs = external_data_of(path)
            if sorted(refs) != sorted(listed):
                extra = sorted(set(refs) - set(listed))
                raise InputError(f"{path} reads tensors from {', '.join(extra) if extra else 'no external file'} "
                                 f"but {MANIFEST_NAME} lists {', '.join(listed) if listed else 'none'}; changed "
                                 "since export: re-run `deploykit export`")
            for ext in entry.external_data or []:
                checked_file(self.folder, ext["path"], ext["sha256"], ext.get("bytes"))
        return path

    def source_path(self) -> Path:
        """The source checkpoint: relative paths are relative to the export folder, so a folder copied together
        with its checkpoint (or read from another working directory) finds it the same way."""
        path = Path(self.source["path"])
        if not path.is_absolute() and self.folder is not None:
            path = self.folder / path
        return path

    def source_needs(self) -> str | None:
        """The flag that reloading the source would need: ``--model-def`` or ``--trust-code`` (both run code, so
        only this command line grants them, never the manifest), or None for a plain checkpoint."""
        stored = self.source.get("options") if isinstance(self.source.get("options"), dict) else {}
        kind = self.source.get("kind")
        if stored.get("model_def") or kind == "model-def":
            return "--model-def"
        if stored.get("allow_pickle") or kind in ("pickled-module", "torchscript", "exported-program"):
            return "--trust-code"  # a pickled module, TorchScript and .pt2 programs are code (alias --allow-pickle)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": self.created, "source": self.source, "model": self.model,
                "input": self.input, "output": self.output, "preprocess": self.preprocess, "opset": self.opset,
                "versions": self.versions, "artifacts": [Artifact.from_json(a).to_json() for a in self.artifacts],
                **({"timings": self.timings} if self.timings else {}), **self.extra}

    def save(self, folder: Path) -> Path:
        """Write ``folder/deploykit.json`` -- after the same checks :meth:`load` makes, so deploykit never swaps in
        a manifest that its own reader would refuse (a checkpoint's out-of-range field, say)."""
        path = Path(folder) / MANIFEST_NAME
        data = self.to_dict()
        try:
            validate_manifest(data, "the new manifest")
        except InputError as exc:
            raise InputError(str(exc).replace("re-run `deploykit export`", "nothing was written; fix the source "
                                              "(a checkpoint field, --labels) and export again")) from None
        write_json_atomic(path, data)
        self.folder = Path(folder)
        return path

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """Read and validate ``folder/deploykit.json`` (or the manifest file itself)."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME if folder.is_dir() else folder
        if path.is_symlink() or not path.is_file():
            raise InputError(f"{folder} is not an export folder (no {MANIFEST_NAME}); run `deploykit export` first")
        data = read_json(path, "deploykit manifest")
        validate_manifest(data, str(path))
        known = {"schema", "created", "source", "model", "input", "output", "preprocess", "opset", "versions",
                 "artifacts", "timings"}
        return cls(source=data["source"], model=data["model"], input=data["input"], output=data["output"],
                   preprocess=data["preprocess"], opset=data.get("opset"), versions=data.get("versions", {}),
                   artifacts=[Artifact.from_json(a) for a in data.get("artifacts", [])],
                   created=data.get("created", ""),
                   extra={k: v for k, v in data.items() if k not in known}, folder=path.parent,
                   timings=dict(data.get("timings") or {}))


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
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


def artifact_kind(name: str) -> str | None:
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(ENGINE_SUFFIXES):
        return "engine"
    return None


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
