"""``deploykit.json``: the export folder's sidecar manifest (source, input, preprocessing, artifacts, parity) as
typed records -- :class:`Manifest` and one :class:`Artifact` per listed file. What the file must hold is
:mod:`deploykit.manifest_schema`; the checks a listed file passes before it is read, :mod:`deploykit.checked_files`
(both re-exported here: callers import the manifest's names from this module)."""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from deploykit.checked_files import check_graph, checked_file, content_sha256, external_data_of
from deploykit.errors import InputError
from deploykit.files import read_json, sha256_file, write_json_atomic
from deploykit.manifest_schema import (ARTIFACT_NAME, EVIDENCE_FORMAT, LABEL, MANIFEST_NAME, MAX_CLASSES, PRECISIONS,
                                       SCHEMA, validate_evidence, validate_manifest)
from deploykit.preprocess import Preprocess

__all__ = ["ARTIFACT_NAME", "ENGINE_SUFFIXES", "EVIDENCE_FORMAT", "LABEL", "MANIFEST_NAME", "MAX_CLASSES",
           "PRECISIONS", "SCHEMA", "Artifact", "Manifest", "artifact_kind", "check_graph", "checked_file",
           "content_sha256", "external_data_of", "validate_evidence", "validate_manifest", "verified", "versions"]
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


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
    def verified(self) -> bool:
        """Its parity passed (:func:`verified`)."""
        return verified(self.parity)

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


def artifact_kind(name: str) -> str | None:
    """``onnx`` or ``engine`` from a file name (None for neither): the one answer to "what kind of file"."""
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(ENGINE_SUFFIXES):
        return "engine"
    return None


def verified(parity: Any) -> bool:
    """Whether a parity record says its artifact passed verification: ``"passed": true``, nothing else (no
    record, a failed or unjudged one). The one "verified" test: an artifact's (:attr:`Artifact.verified`), a bench
    row's (``bench.results.fastest_verified``) and the report's choice of what to ship
    (``report.recommended_artifact``) all ask it."""
    return isinstance(parity, Mapping) and parity.get("passed") is True
