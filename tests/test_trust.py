"""The trust mechanisms one by one: the folder transaction and its lock, manifest/JSON checks, pickle-free .pt2
loading, bounded images, literal text. The CLI-level hostile cases live in tests/hostile/."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploykit.errors import CheckpointError, InputError
from deploykit.files import dumps_strict, parse_json, sha256_file
from deploykit.folder import folder_lock, lock_path, staged_export
from deploykit.manifest import MANIFEST_NAME, SCHEMA, Manifest, checked_file


def _manifest(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    record = {"schema": SCHEMA, "source": {"path": "x.pth", "sha256": "0" * 64, "kind": "state_dict", "options": {}},
              "model": {"arch": None, "num_classes": 2, "class_names": ["a", "b"]},
              "input": {"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32"},
              "output": {"name": "logits", "shape": [1, 2], "dtype": "float32"},
              "preprocess": {"channels": 3, "height": 8, "width": 8, "mean": [0, 0, 0], "std": [1, 1, 1]},
              "opset": 18, "artifacts": [{"path": n, "precision": "fp32", "sha256": sha256_file(folder / n),
                                          "bytes": len(d)} for n, d in files.items()]}
    (folder / MANIFEST_NAME).write_text(json.dumps(record))


# -- the transaction -------------------------------------------------------------------------------------------
def test_swap_replaces_listed_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "ex"
    _manifest(out, {"model.onnx": b"old graph", "model.fp16.onnx": b"old fp16"})
    (out / "notes.txt").write_text("mine")
    (out / "model.x.onnx").write_text("also mine: not listed")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    with folder_lock(out), staged_export(out) as (staging, previous):
        assert previous is not None and staging.parent == out.parent and staging != out
        assert not (staging / "notes.txt").exists()  # carried over only at commit
        _manifest(staging, {"model.onnx": b"new graph"})
    names = sorted(p.name for p in out.iterdir())
    assert names == ["deploykit.json", "model.onnx", "model.x.onnx", "notes.txt", "plots"]
    assert (out / "model.onnx").read_bytes() == b"new graph"
    assert (out / "plots" / "a.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]  # no staging folder, no lock left


def test_a_failure_inside_leaves_the_old_export_and_nothing_beside(tmp_path):
    out = tmp_path / "ex"
    _manifest(out, {"model.onnx": b"old graph"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        with folder_lock(out), staged_export(out) as (staging, _):
            (staging / "model.onnx").write_bytes(b"half")
            raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]


def test_a_failed_first_export_creates_no_folder(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(InputError):
        with folder_lock(out), staged_export(out):
            raise InputError("the checkpoint is corrupt")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_folder_of_other_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.a.onnx").write_bytes(b"the user's")
    with pytest.raises(InputError, match="not a deploykit export"):
        with folder_lock(out), staged_export(out):
            pass
    assert (out / "model.a.onnx").read_bytes() == b"the user's"


def test_the_lock_refuses_a_second_writer_and_stale_staging_is_cleared(tmp_path):
    out = tmp_path / "ex"
    stale = tmp_path / ".ex.deploykit-staging-killed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"from a killed export")
    with folder_lock(out):
        assert lock_path(out).is_file()
        with pytest.raises(InputError, match="another deploykit export is writing"):
            with folder_lock(out):
                pass
        with staged_export(out) as (staging, _):
            assert not stale.exists()
            _manifest(staging, {"model.onnx": b"g"})
    assert not lock_path(out).exists()


# -- manifest and JSON as data ---------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, field", [
    (lambda m: m["model"].update(num_classes="2"), "model.num_classes"),
    (lambda m: m["artifacts"][0].update(path="../x.onnx"), "artifacts.0.path"),
    (lambda m: m["artifacts"][0].update(path="/etc/passwd"), "artifacts.0.path"),
    (lambda m: m["model"].update(class_names=["a", 5]), "model.class_names.1"),
    (lambda m: m["preprocess"].update(height=100000), "preprocess"),
    (lambda m: m["preprocess"].update(mean=[0, 0, 1e308 * 10]), None),
    (lambda m: m.pop("input"), "input"),
])
def test_malformed_manifests_name_the_field(tmp_path, edit, field):
    out = tmp_path / "ex"
    _manifest(out, {"model.onnx": b"g"})
    record = json.loads((out / MANIFEST_NAME).read_text())
    edit(record)
    (out / MANIFEST_NAME).write_text(json.dumps(record))
    with pytest.raises(InputError) as err:
        Manifest.load(out)
    assert "\n" not in str(err.value)
    if field:
        assert field in str(err.value)


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"a": NaN}', '{"a": 1e999}', '{"a": ' + "9" * 5000 + "}",
                                  '{"a": Infinity}', "not json"])
def test_json_parsing_is_strict_and_bounded(text):
    with pytest.raises(InputError):
        parse_json(text, "f.json", "manifest")


def test_what_deploykit_writes_is_strict_json():
    text = dumps_strict({"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads(text) == {"a": None, "b": [None, 1.5]}


def test_artifacts_are_checked_against_the_manifest(tmp_path):
    out = tmp_path / "ex"
    _manifest(out, {"model.bin": b"graph"})
    manifest = Manifest.load(out)
    assert manifest.file("model.bin") == out / "model.bin"
    (out / "model.bin").write_bytes(b"other")  # same size, other bytes
    with pytest.raises(InputError, match="sha256 differs"):
        Manifest.load(out).file("model.bin")
    (out / "model.bin").unlink()
    (tmp_path / "elsewhere.onnx").write_bytes(b"graph")
    os.symlink(tmp_path / "elsewhere.onnx", out / "model.onnx")
    with pytest.raises(InputError, match="symbolic link"):
        checked_file(out, "model.onnx", sha256_file(tmp_path / "elsewhere.onnx"))


# -- .pt2 programs without pickles -------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.export.save(torch.export.export(Net().eval(), (torch.zeros(1, 3, 2, 2),)), path)
    return path


def _tamper(src: Path, dest: Path, marker: Path, where: str) -> Path:
    import torch

    with zipfile.ZipFile(src) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    for name in list(files):
        if where == "sample" and name.endswith("sample_inputs/model.pt"):
            buf = io.BytesIO()
            torch.save(((_Payload(str(marker)),), {}), buf)
            files[name] = buf.getvalue()
        if where == "weight" and name.endswith("model_weights_config.json"):
            config = json.loads(files[name])
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            files[name] = json.dumps(config).encode()
            buf = io.BytesIO()
            torch.save(_Payload(str(marker)), buf)
            files[name.rsplit("/", 1)[0] + "/" + first["path_name"]] = buf.getvalue()
    with zipfile.ZipFile(dest, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return dest


@pytest.mark.parametrize("where", ["clean", "sample", "weight"])
def test_pt2_needs_trust_code_and_nothing_runs_without_it(program, tmp_path, where):
    """A .pt2 is code (guard code torch execs, shape expressions it sympifies): without --trust-code it is refused
    before torch opens it, whatever it holds."""
    from deploykit.models.loading import LoadOptions, load_model

    marker = tmp_path / "marker"
    path = program if where == "clean" else _tamper(program, tmp_path / "evil.pt2", marker, where)
    with pytest.raises(CheckpointError, match="--trust-code"):
        load_model(path, LoadOptions())
    assert not marker.exists()


def test_a_clean_pt2_loads_when_trusted(program):
    from deploykit.models.loading import LoadOptions, load_model

    loaded = load_model(program, LoadOptions(allow_pickle=True))
    assert loaded.kind == "exported-program" and loaded.num_classes == 3


def test_torchscript_needs_trust_code(tmp_path):
    """A TorchScript archive whose scripted __setstate__ would write a file: refused without --trust-code."""
    import torch

    from deploykit.models.loading import LoadOptions, load_model

    marker = tmp_path / "marker"
    path = str(marker)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.ones(2, 4)
            self.marker = path

        def forward(self, x):
            return x.flatten(1) @ self.w.t()

        @torch.jit.export
        def __getstate__(self):
            return (self.w, self.training, self.marker)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool, str]):
            torch.from_file(state[2], shared=True, size=1)  # a file created by loading the archive
            self.w = state[0]
            self.training = state[1]
            self.marker = state[2]

    torch.jit.script(Net()).save(str(tmp_path / "m.ts"))
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="--trust-code"):
        load_model(tmp_path / "m.ts", LoadOptions(input_shape=(1, 2, 2)))
    assert not marker.exists()


def test_a_manifest_cannot_grant_allow_pickle(tmp_path):
    from deploykit.models.loading import LoadOptions

    opts = LoadOptions.from_dict({"allow_pickle": True, "model_def": "evil.py:build", "arch": "resnet18"})
    assert opts.allow_pickle is False and opts.model_def is None and opts.arch == "resnet18"


# -- images and sizes --------------------------------------------------------------------------------------------
def test_extreme_images_are_refused_before_decoding(tmp_path):
    from deploykit.preprocess import open_image

    Image.new("L", (50000, 1)).save(tmp_path / "line.png")
    with pytest.raises(InputError, match="aspect ratio"):
        open_image(tmp_path / "line.png")
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # a few kB on disk, 400 MP
    with pytest.raises(InputError, match="megapixels"):
        open_image(tmp_path / "bomb.png")


def test_a_bomb_in_a_folder_is_skipped_with_the_rest_used(tmp_path):
    from deploykit.data import scan_images
    from deploykit.messages import Recorder

    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "ok.png")
    recorder = Recorder()
    images = scan_images(tmp_path, reporter=recorder)
    assert [p.name for p in images.paths] == ["ok.png"] and "bomb.png" in recorder.of("warn")[0]


@pytest.mark.parametrize("changes", [dict(height=100000), dict(resize=100000), dict(mean=(float("nan"),) * 3),
                                     dict(std=(float("inf"),) * 3)])
def test_preprocessing_bounds(changes):
    from deploykit.preprocess import Preprocess

    with pytest.raises(InputError):
        Preprocess(channels=3, height=8, width=8, mean=(0.0,) * 3, std=(1.0,) * 3).replace(**changes)


# -- names are text ----------------------------------------------------------------------------------------------
def test_names_render_literally():
    from deploykit.cli.render import literal
    from deploykit.text import markdown_cell

    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(literal("[red]x[/red] [/bogus] [link=http://e]y[/link] \x1b[31mred\x1b]8;;http://e\x1b\\"))
    shown = console.file.getvalue()
    assert shown.startswith("[red]x[/red] [/bogus] [link=http://e]y[/link] \\x1b[31mred\\x1b]8;;http://e")
    assert "\x1b" not in shown
    from deploykit.text import printable

    # bidi overrides/isolates, zero-width characters and CR are shown as escapes, not acted on
    assert printable("a\u202eb\u2066c\u2069\u200bd\re") == "a\\u202eb\\u2066c\\u2069\\u200bd\\x0de"
    cell = markdown_cell("<script>|*x*")
    assert "<" not in cell and "|" not in cell.replace("\\|", "") and "\\*" in cell
    # an entity cannot form, and a command's `&&` stays readable in the raw text (issue 25)
    assert markdown_cell("a && b") == "a && b" and markdown_cell("&lt;b&gt; &#60;") == "&amp;lt;b&amp;gt; &amp;\\#60;"


def test_openvino_cache_is_keyed_by_content(tmp_path):
    """A file rewritten in place with the same size and its mtime set back keeps its inode, size and mtime: the
    compiled-model cache must still see a new file."""
    from deploykit.runners.openvino import model_cache_dir

    path = tmp_path / "model.onnx"
    path.write_bytes(b"graph one")
    st = path.stat()
    first = model_cache_dir(path, tmp_path / "cache")
    with open(path, "r+b") as handle:
        handle.write(b"graph two")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino and path.stat().st_mtime_ns == st.st_mtime_ns
    assert model_cache_dir(path, tmp_path / "cache") != first


def test_a_manifest_deploykit_would_refuse_is_never_written(tmp_path):
    from deploykit.manifest import Manifest

    manifest = Manifest(source={"path": "x.pth"}, model={"num_classes": 2, "class_names": ["a", "a"]},
                        input={"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32"},
                        output={"name": "logits", "shape": [1, 2], "dtype": "float32"},
                        preprocess={"channels": 3, "height": 8, "width": 8, "mean": [0, 0, 0], "std": [1, 1, 1]},
                        opset=18)
    with pytest.raises(InputError, match="twice"):
        manifest.save(tmp_path)
    manifest.model.update(class_names=["a", "b"], best_val_acc=500)
    with pytest.raises(InputError, match="best_val_acc"):
        manifest.save(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()
