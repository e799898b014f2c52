"""Unit tests of ``deploykit.json`` as a record: writing and reading it, looking artifacts up, checking their files.

Tiny fake artifacts (a few bytes each): no model, no ONNX. The malformed-manifest and symlink cases live in
test_trust.py; these cover the record's own behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deploykit.checked_files as checked_files
from deploykit.errors import InputError
from deploykit.files import sha256_file
from deploykit.manifest import (MANIFEST_NAME, SCHEMA, Artifact, Manifest, artifact_kind, checked_file,
                                validate_manifest)


def _record(**changes) -> Manifest:
    record = dict(source={"path": "model.pth", "kind": "state_dict", "options": {}},
                  model={"arch": "lenet", "num_classes": 2, "class_names": ["cat", "dog"]},
                  input={"name": "input", "shape": [None, 1, 8, 8], "dtype": "float32"},
                  output={"name": "logits", "shape": [None, 2], "dtype": "float32"},
                  preprocess={"channels": 1, "height": 8, "width": 8, "mean": [0.5], "std": [0.5]}, opset=18,
                  versions={"python": "3"})
    record.update(changes)
    return Manifest(**record)


def _tiny_onnx(tag: str) -> bytes:
    """A real (one Identity node) ONNX graph: ``Manifest.file`` reads an ONNX artifact's graph before handing it out."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], tag, [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def _with_files(folder: Path, files: dict[str, bytes], precisions: dict[str, str] | None = None) -> Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _record()
    for name, data in files.items():
        (folder / name).write_bytes(data)
        manifest.set_artifact({"path": name, "precision": (precisions or {}).get(name, "fp32"),
                               "sha256": sha256_file(folder / name), "bytes": len(data)})
    manifest.save(folder)
    return manifest


def test_save_then_load_gives_the_same_record_and_keeps_unknown_keys(tmp_path):
    manifest = _record(extra={"bench": {"kept": True}})
    manifest.set_artifact({"path": "model.onnx", "precision": "fp32", "sha256": "a" * 64, "bytes": 3})
    path = manifest.save(tmp_path)
    assert path == tmp_path / MANIFEST_NAME and manifest.folder == tmp_path
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["bench"] == {"kept": True}
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest  # every field but the folder, which compare=False leaves out
    assert loaded.folder == tmp_path and loaded.extra == {"bench": {"kept": True}}
    assert loaded.to_dict() == manifest.to_dict()
    assert Manifest.load(path) == manifest  # the manifest file itself, as well as its folder


def test_load_refuses_a_folder_without_a_manifest(tmp_path):
    with pytest.raises(InputError, match="not an export folder"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).mkdir()  # a folder named deploykit.json is not a manifest either
    with pytest.raises(InputError, match="not an export folder"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize("data, says", [
    ([], "not a deploykit manifest"),
    ({"schema": "deploykit-manifest/0"}, "not a deploykit manifest"),
])
def test_validate_refuses_other_documents(data, says):
    with pytest.raises(InputError, match=says):
        validate_manifest(data, "x.json")


def test_validate_refuses_a_file_listed_twice_and_names_that_do_not_match_the_classes(tmp_path):
    manifest = _record()
    entry = {"path": "model.onnx", "precision": "fp32", "sha256": "a" * 64}
    manifest.artifacts = [entry, dict(entry)]
    with pytest.raises(InputError, match="listed twice"):
        validate_manifest(manifest.to_dict(), "x.json")
    with pytest.raises(InputError, match="3 names for 2 classes"):
        validate_manifest(_record(model={"num_classes": 2, "class_names": ["a", "b", "c"]}).to_dict(), "x.json")


def test_set_artifact_replaces_the_entry_of_the_same_file():
    manifest = _record()
    manifest.set_artifact({"path": "model.onnx", "precision": "fp32", "sha256": "a" * 64})
    manifest.set_artifact({"path": "model.fp16.onnx", "precision": "fp16", "sha256": "b" * 64})
    manifest.set_artifact({"path": "model.onnx", "precision": "fp32", "sha256": "c" * 64})
    assert [a.path for a in manifest.artifacts] == ["model.fp16.onnx", "model.onnx"]
    assert manifest.artifact("model.onnx").sha256 == "c" * 64
    assert manifest.artifact("model.int8.onnx") is None


def test_an_artifact_reads_by_attribute_and_round_trips_its_json_key_for_key():
    """Every key in its order (a null parity too), the keys this version does not know, nested facts by reference."""
    engine = {"tensorrt": "10.3.0", "profile": {"min": [4, 3, 8, 8]}}
    record = {"path": "model.fp16.engine", "precision": "fp16", "sha256": "a" * 64, "bytes": 9, "parity": None,
              "engine": engine, "batch": 4, "future_key": [1, 2]}
    entry = Artifact.from_json(record)
    assert (entry.path, entry.precision, entry.kind, entry.batch, entry.passed) == \
        ("model.fp16.engine", "fp16", "engine", 4, None)
    assert entry.engine is engine and entry.extra == {"future_key": [1, 2]}
    assert list(entry.to_json().items()) == list(record.items())
    assert dict(entry) == record and entry["parity"] is None and entry.get("details") is None  # the JSON view
    judged = entry.replace(parity={"passed": True, "metrics": {"accuracy": 99.0}})
    assert judged.passed and judged.metrics == {"accuracy": 99.0} and entry.parity is None  # frozen: a copy
    int8 = Artifact.from_json({"path": "model.int8.onnx", "precision": "int8", "sha256": "b" * 64,
                               "details": {"target": "tensorrt", "remainder": "fp16"}})
    assert (int8.kind, int8.target, int8.remainder) == ("onnx", "tensorrt", "fp16")
    assert list(int8.replace(tensorrt_ready={"x": True}).to_json()) == ["path", "precision", "sha256", "details",
                                                                         "tensorrt_ready"]  # a new key goes last
    with pytest.raises(TypeError):
        int8["precision"] = "fp32"  # type: ignore[index]


def test_a_saved_manifest_is_the_json_it_was_loaded_from(tmp_path):
    manifest = _record()
    manifest.set_artifact({"path": "model.onnx", "precision": "fp32", "sha256": "a" * 64, "bytes": 3, "parity": None,
                           "custom": {"kept": 1}})
    manifest.set_artifact({"path": "model.fp16.onnx", "precision": "fp16", "sha256": "b" * 64, "parity": None,
                           "details": {"kept_fp32": []}})
    text = manifest.save(tmp_path).read_text()
    loaded = Manifest.load(tmp_path)
    loaded.update_artifact("model.onnx", parity={"passed": True})  # in place: the order of the files kept
    assert [a.path for a in loaded.artifacts] == ["model.onnx", "model.fp16.onnx"]
    assert loaded.find("model.onnx").passed and loaded.find("model.fp16.onnx", precision="fp32") is None
    loaded.update_artifact("model.onnx", parity=None)
    assert (tmp_path / MANIFEST_NAME).read_text() == text and Path(loaded.save(tmp_path)).read_text() == text
    with pytest.raises(InputError, match="not listed"):
        loaded.update_artifact("model.int8.onnx", parity=None)


def test_find_by_precision_and_kind():
    manifest = _record()
    for path, precision in (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16"), ("model.fp16.engine", "fp16"),
                            ("model.int8-cpu.onnx", "int8-cpu")):
        manifest.set_artifact({"path": path, "precision": precision, "sha256": "a" * 64})
    assert manifest.find(precision="fp16")["path"] == "model.fp16.onnx"  # the first listed
    assert manifest.find(precision="fp16", kind="engine")["path"] == "model.fp16.engine"
    assert manifest.find(kind="onnx")["path"] == "model.onnx"
    assert manifest.find(precision="int8") is None and manifest.find(precision="fp32", kind="engine") is None


@pytest.mark.parametrize("name, kind", [("model.onnx", "onnx"), ("model.fp16.engine", "engine"),
                                        ("model.plan", "engine"), ("model.trt", "engine"), ("notes.txt", None),
                                        ("model.onnx.bak", None)])
def test_artifact_kind_is_read_from_the_suffix(name, kind):
    assert artifact_kind(name) == kind


def test_file_returns_checked_paths_and_refuses_what_the_manifest_does_not_list(tmp_path):
    _with_files(tmp_path / "ex", {"model.onnx": _tiny_onnx("graph"), "model.fp16.onnx": _tiny_onnx("half")},
                {"model.fp16.onnx": "fp16"})
    manifest = Manifest.load(tmp_path / "ex")
    assert manifest.file("model.onnx") == tmp_path / "ex" / "model.onnx"
    assert manifest.file(manifest.find(precision="fp16")) == tmp_path / "ex" / "model.fp16.onnx"
    with pytest.raises(InputError, match="not listed"):
        manifest.file("model.int8.onnx")
    with pytest.raises(InputError, match="not loaded from an export folder"):
        _record().file("model.onnx")


def test_checked_file_refuses_missing_resized_and_non_names(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    digest = sha256_file(tmp_path / "model.onnx")
    assert checked_file(tmp_path, "model.onnx", digest, 5) == tmp_path / "model.onnx"
    with pytest.raises(InputError, match="is missing"):
        checked_file(tmp_path, "model.fp16.onnx", digest)
    with pytest.raises(InputError, match="5 bytes, the manifest says 6"):
        checked_file(tmp_path, "model.onnx", digest, 6)
    for name in ("../model.onnx", ".hidden", "a/b.onnx", "", "a\x00b"):
        with pytest.raises(InputError, match="not a file name inside the folder"):
            checked_file(tmp_path, name, digest)
    assert checked_file(tmp_path, "model.onnx", None) == tmp_path / "model.onnx"  # no digest: existence only


def test_a_checked_file_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(checked_files, "_VERIFIED", {})
    (tmp_path / "model.onnx").write_bytes(b"graph")
    digest = sha256_file(tmp_path / "model.onnx")
    calls = []
    monkeypatch.setattr(checked_files, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    checked_file(tmp_path, "model.onnx", digest)
    checked_file(tmp_path, "model.onnx", digest)
    assert len(calls) == 1
    monkeypatch.setattr(checked_files, "_VERIFIED", {})  # a new process: the user's cache remembers it
    checked_file(tmp_path, "model.onnx", digest)
    assert len(calls) == 1 and (tmp_path / "cache" / "verified-files.json").is_file()
    (tmp_path / "model.onnx").write_bytes(b"grapH")  # same size, new bytes: a new identity, hashed again
    with pytest.raises(InputError, match="sha256 differs"):
        checked_file(tmp_path, "model.onnx", digest)
    assert len(calls) == 2


def test_source_path_is_relative_to_the_folder_and_reloading_flags_come_from_the_source(tmp_path):
    manifest = _record()
    assert manifest.source_path() == Path("model.pth")  # not loaded: as recorded
    manifest.save(tmp_path)
    assert manifest.source_path() == tmp_path / "model.pth"
    assert _record(source={"path": "/abs/model.pth"}).source_path() == Path("/abs/model.pth")
    assert manifest.source_needs() is None
    assert _record(source={"path": "m.py", "kind": "model-def"}).source_needs() == "--model-def"
    assert _record(source={"path": "m.pt", "options": {"allow_pickle": True}}).source_needs() == "--trust-code"


def test_preprocessing_and_class_names_are_read_from_the_record():
    manifest = _record()
    pre = manifest.preprocessing
    assert (pre.channels, pre.height, pre.width) == (1, 8, 8)
    assert manifest.class_names == ["cat", "dog"]
    assert _record(model={"num_classes": 2}).class_names is None
