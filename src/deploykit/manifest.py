"""``deploykit.json``: the export folder's sidecar manifest (source, input, preprocessing, artifacts, parity)."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from deploykit.errors import InputError
from deploykit.files import read_json, sha256_file, write_json_atomic
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


# -- schema: what a deploykit.json must hold before any of it is used --------------------------------------------
# pydantic (already installed with Typer) rather than a hand-written walker: typed fields with bounds, one error per
# field with its location, strict finite numbers; unknown keys are kept, so newer manifests still load.
MAX_CLASSES = 1_000_000
ARTIFACT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"  # a plain file name inside the folder: no /, no .., no dotfile
_SHA256 = r"^[0-9a-f]{64}$"
Label = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)


class _Source(_Record):
    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    sha256: Annotated[str, StringConstraints(pattern=_SHA256)] | None = None
    kind: str | None = None
    options: dict[str, Any] = {}


class _Model(_Record):
    arch: Annotated[str, StringConstraints(max_length=128)] | None = None
    num_classes: Annotated[int, Field(ge=1, le=MAX_CLASSES)]
    class_names: list[Label] | None = None
    best_val_acc: float | int | None = None


class _Tensor(_Record):
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    shape: Annotated[list[Annotated[int, Field(ge=1, le=1 << 20)] | None], Field(min_length=1, max_length=8)]
    dtype: str


class _Artifact(_Record):
    path: Annotated[str, StringConstraints(pattern=ARTIFACT_NAME)]
    precision: Literal["fp32", "fp16", "bf16", "int8", "int8-cpu"]
    sha256: Annotated[str, StringConstraints(pattern=_SHA256)]
    bytes: Annotated[int, Field(ge=0)] | None = None
    parity: dict[str, Any] | None = None


class _Manifest(_Record):
    schema_: Annotated[str, Field(alias="schema")]
    created: str = ""
    source: _Source
    model: _Model
    input: _Tensor
    output: _Tensor
    preprocess: dict[str, Any]
    opset: Annotated[int, Field(ge=1, le=100)] | None = None
    versions: dict[str, Any] = {}
    artifacts: list[_Artifact] = []


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validate_manifest(data: object, where: str) -> None:
    """Raise InputError naming ``where`` and the first bad field when ``data`` is not a usable manifest."""
    if not isinstance(data, dict):
        raise InputError(f"{where} is not a deploykit manifest (a JSON object); re-run `deploykit export`")
    if data.get("schema") != SCHEMA:
        raise InputError(f"{where} is not a deploykit manifest ({SCHEMA}); re-run `deploykit export`")
    try:
        record = _Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"{where}: field {_field(first['loc'])}: {first['msg']}; re-run `deploykit export`") from None
    paths = [a.path for a in record.artifacts]
    if len(set(paths)) != len(paths):
        raise InputError(f"{where}: field artifacts: the same file is listed twice; re-run `deploykit export`")
    names = record.model.class_names
    if names is not None and len(names) != record.model.num_classes:
        raise InputError(f"{where}: field model.class_names: {len(names)} names for {record.model.num_classes} "
                         "classes; re-run `deploykit export`")
    try:
        Preprocess.from_dict(data["preprocess"])
    except InputError as exc:
        raise InputError(f"{where}: field preprocess: {exc}") from None


@dataclass
class Manifest:
    source: dict[str, Any]
    model: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    preprocess: dict[str, Any]
    opset: int | None
    versions: dict[str, Any] = field(default_factory=versions)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, repr=False, compare=False)  # where it was loaded from / saved to

    @property
    def preprocessing(self) -> Preprocess:
        return Preprocess.from_dict(self.preprocess)

    @property
    def class_names(self) -> list[str] | None:
        return self.model.get("class_names")

    def artifact(self, path: str) -> dict[str, Any] | None:
        return next((a for a in self.artifacts if a["path"] == path), None)

    def set_artifact(self, entry: dict[str, Any]) -> None:
        self.artifacts = [a for a in self.artifacts if a["path"] != entry["path"]] + [entry]

    def find(self, *, precision: str | None = None, kind: str | None = None) -> dict[str, Any] | None:
        """The first artifact entry with that precision and kind (``onnx`` or ``engine``)."""
        for entry in self.artifacts:
            if precision is not None and entry.get("precision") != precision:
                continue
            if kind is not None and artifact_kind(entry["path"]) != kind:
                continue
            return entry
        return None

    def file(self, entry: dict[str, Any] | str) -> Path:
        """The checked path of an artifact this manifest lists: a regular file inside the folder (no symlink out of
        it) whose bytes match the recorded sha256. Anything else is a one-line InputError saying to re-export."""
        if self.folder is None:
            raise InputError("this manifest was not loaded from an export folder")
        if isinstance(entry, str):
            name = entry
            entry = self.artifact(name) or {}
            if not entry:
                raise InputError(f"{name} is not listed in {self.folder / MANIFEST_NAME}")
        return checked_file(self.folder, entry["path"], entry.get("sha256"), entry.get("bytes"))

    def source_path(self) -> Path:
        """The source checkpoint: relative paths are relative to the export folder, so a folder copied together
        with its checkpoint (or read from another working directory) finds it the same way."""
        path = Path(self.source["path"])
        if not path.is_absolute() and self.folder is not None:
            path = self.folder / path
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": self.created, "source": self.source, "model": self.model,
                "input": self.input, "output": self.output, "preprocess": self.preprocess, "opset": self.opset,
                "versions": self.versions, "artifacts": self.artifacts, **self.extra}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        write_json_atomic(path, self.to_dict())
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
                 "artifacts"}
        return cls(source=data["source"], model=data["model"], input=data["input"], output=data["output"],
                   preprocess=data["preprocess"], opset=data.get("opset"), versions=data.get("versions", {}),
                   artifacts=[dict(a) for a in data.get("artifacts", [])], created=data.get("created", ""),
                   extra={k: v for k, v in data.items() if k not in known}, folder=path.parent)


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def artifact_kind(name: str) -> str | None:
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(ENGINE_SUFFIXES):
        return "engine"
    return None


# Hashing a 100 MB graph takes ~0.1 s; a process that reads the same file twice (export then verify) hashes once.
_VERIFIED: dict[tuple, str] = {}


def checked_file(folder: Path, name: str, sha256: str | None, size: int | None = None) -> Path:
    """``folder/name`` after checking it is a plain file inside ``folder`` whose content has ``sha256``."""
    folder = Path(folder)
    if not re.match(ARTIFACT_NAME, name or ""):
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
                         "it was changed after export: re-run `deploykit export`")
    if sha256 is None:
        return path
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if _VERIFIED.get(key) != sha256:
        if sha256_file(path) != sha256:
            raise InputError(f"{path} does not match {MANIFEST_NAME} (sha256 differs): it was changed after export; "
                             "re-run `deploykit export`")
        _VERIFIED[key] = sha256
    return path
