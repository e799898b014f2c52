"""What a ``deploykit.json`` must hold before any of it is used: the manifest's schema (its name, its version, the
shape of every field read), checked with :mod:`deploykit.schema` (see there for why no library). The typed record
built from a checked manifest is :mod:`deploykit.manifest`."""

from __future__ import annotations

from typing import Any

from deploykit import schema as S
from deploykit.errors import InputError
from deploykit.preprocess import Preprocess

MANIFEST_NAME = "deploykit.json"
SCHEMA = "deploykit-manifest/1"

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
