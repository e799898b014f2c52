"""``deploykit.json``: the export folder's sidecar manifest (source, input, preprocessing, artifacts, parity)."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from deploykit.errors import InputError
from deploykit.files import write_json_atomic
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

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": self.created, "source": self.source, "model": self.model,
                "input": self.input, "output": self.output, "preprocess": self.preprocess, "opset": self.opset,
                "versions": self.versions, "artifacts": self.artifacts, **self.extra}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST_NAME if folder.is_dir() else folder
        if not path.is_file():
            raise InputError(f"{folder} is not an export folder (no {MANIFEST_NAME}); run `deploykit export` first")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not valid JSON ({exc}); re-run `deploykit export`") from None
        if data.get("schema") != SCHEMA:
            raise InputError(f"{path} is not a deploykit manifest ({SCHEMA}); re-run `deploykit export`")
        known = {"schema", "created", "source", "model", "input", "output", "preprocess", "opset", "versions",
                 "artifacts"}
        return cls(source=data["source"], model=data["model"], input=data["input"], output=data["output"],
                   preprocess=data["preprocess"], opset=data.get("opset"), versions=data.get("versions", {}),
                   artifacts=list(data.get("artifacts", [])), created=data.get("created", ""),
                   extra={k: v for k, v in data.items() if k not in known})
