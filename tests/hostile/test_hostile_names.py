"""Names are text (issue 10, item 5): class names and paths from user files print literally and are escaped in
report.md (no rich markup interpreted, no raw escape sequence reaching the terminal, no raw HTML/Markdown)."""

from __future__ import annotations

import json
import re

import pytest
from _hostile import assert_no_traceback, assert_ok_or_refused, edit_manifest, invoke

MARKUP = {
    "markup-red": "[red]x[/red]",
    "markup-bogus-close": "[/bogus]",
    "markup-link": "[link=http://e]x[/link]",
}
ESCAPES = {
    "ansi-colour": "\x1b[31mred",
    "osc8-hyperlink": "\x1b]8;;http://e\x1b\\link",
}
FILLER = [f"c{i}" for i in range(1, 10)]


def _check_literal(result, names):
    """Printed as text: exit 0, each name visible as typed, no traceback."""
    assert_no_traceback(result)
    assert result.code == 0, result.describe()
    for name in names:
        assert name in result.output, f"{name!r} was not printed literally: {result.output!r}"


def _check_no_escape(result):
    """A name holding escape sequences: printed with them stripped, or refused in one line; never raw ESC."""
    assert_ok_or_refused(result)
    assert "\x1b" not in result.output, f"a raw escape sequence reached the terminal: {result.output!r}"


def _set_class_names(folder, names):
    """Other class names in both places an export records them (deploykit.json and model.onnx's metadata, which
    must agree), with model.onnx's new sha256 in the manifest."""
    import hashlib

    import onnx

    model = onnx.load(str(folder / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "deploykit.class_names":
            prop.value = json.dumps(names)
    onnx.save(model, str(folder / "model.onnx"))
    digest = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()

    def patch(data):
        data["model"]["class_names"] = names
        for art in data["artifacts"]:
            if art["path"] == "model.onnx":
                art.update(sha256=digest, bytes=(folder / "model.onnx").stat().st_size)

    edit_manifest(folder, patch)


@pytest.mark.parametrize("case", list(MARKUP) + list(ESCAPES))
def test_manifest_names_printed_literally(case, export_copy, image):
    name = {**MARKUP, **ESCAPES}[case]
    _set_class_names(export_copy, [name] + FILLER)
    result = invoke("predict", export_copy, image, "--topk", "10")
    if case in MARKUP:
        _check_literal(result, [name])
    else:
        _check_no_escape(result)


@pytest.mark.parametrize("kind", ["markup", "escapes"])
def test_labels_flag_names_printed_literally(kind, lenet_ckpt, digit_images, tmp_path, image):
    """The same names given with --labels to export, then predict on the folder."""
    labels = tmp_path / "labels.txt"
    names = list((MARKUP if kind == "markup" else ESCAPES).values())
    names += FILLER[: 10 - len(names)]
    labels.write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    exported = invoke("export", lenet_ckpt, "--out", out, "--labels", labels, "--data", digit_images)
    if kind == "escapes":
        _check_no_escape(exported)
        if exported.code != 0:
            return
    assert_no_traceback(exported)
    assert exported.code == 0, exported.describe()
    predicted = invoke("predict", out, image, "--topk", "10")
    if kind == "markup":
        _check_literal(predicted, names)
    else:
        _check_no_escape(predicted)


def test_onnx_metadata_names_printed_literally(base_export, tmp_path, image):
    import onnx

    model = onnx.load(str(base_export / "model.onnx"))
    names = list(MARKUP.values()) + FILLER[:7]
    props = {p.key: p.value for p in model.metadata_props if p.key != "deploykit.class_names"}
    del model.metadata_props[:]
    for key, value in {**props, "deploykit.class_names": json.dumps(names)}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(tmp_path / "alone.onnx"))
    _check_literal(invoke("predict", tmp_path / "alone.onnx", image, "--topk", "10"), names)


REPORT = {
    "html-class-name": ("class", "<script>alert(1)</script>", "<script>"),
    "pipe-class-name": ("class", "a|b", "a|b"),
    "html-source-path": ("source", "/data/<img src=x onerror=alert(1)>.pth", "<img"),
}


@pytest.mark.parametrize("case", list(REPORT))
def test_report_escapes_names(case, export_copy):
    where, value, raw = REPORT[case]
    if where == "class":
        edit_manifest(export_copy, lambda d: d["model"].update(class_names=[value] + FILLER))
    else:
        edit_manifest(export_copy, lambda d: d["source"].update(path=value))
    result = invoke("report", export_copy)
    assert_no_traceback(result)
    assert result.code == 0, result.describe()
    text = (export_copy / "report.md").read_text()
    assert raw not in text, f"report.md copies {raw!r} raw:\n{text}"


# -- issue 22, class 4: every command, a hostile name set, every sink scanned ---------------------------------------
HOSTILE = ["[/x]", "[link=http://e]l[/link]", "esc\x1b[31mred", "osc\x1b]8;;http://e\x1b\\", "bidi\u202eevil",
           "iso\u2066x\u2069", "zw\u200bj", "$\\frac{$", "cr\rover", "<b>|x"]
SAFE = [n.replace("/", "|") for n in HOSTILE]  # the same set as folder names (no "/" in a file name)
HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff]")


@pytest.fixture(scope="module")
def hostile_set(hostile_root, digit_images):
    """A checkpoint, --labels, an export folder, an ImageFolder and an image, each named with the hostile set."""
    import shutil

    from _hostile import lenet_checkpoint as _lenet_checkpoint

    root = hostile_root / "names22"
    root.mkdir()
    ckpt = _lenet_checkpoint(root / "ck\x1b[31m[red]\u202e$.pth", 3, SAFE)
    data = root / "data\u202e[red]"
    for i, name in enumerate(SAFE):
        folder = data / name
        folder.mkdir(parents=True)
        for j in range(4):
            shutil.copy(digit_images / f"{(i + j) % 8}.png", folder / f"i\x1b{j}.png")
    image = root / "im\x1b]8;;x\x1b\\[red].png"
    shutil.copy(digit_images / "0.png", image)
    out = root / "exp\x1b[2J[red]\u2066"
    labels = ",".join(HOSTILE)  # the folder's names: with "/", so "[/x]" is a bogus close tag
    result = invoke("export", ckpt, "--out", out, "--data", digit_images, "--labels", labels)
    assert result.code == 0, result.describe()
    return {"ckpt": ckpt, "data": data, "image": image, "out": out, "root": root}


RUNS = {
    "export": lambda s: ("export", s["ckpt"], "--out", s["root"] / "again[red]\x1b", "--no-verify", "--labels",
                         ",".join(HOSTILE)),
    "predict-folder": lambda s: ("predict", s["out"], s["image"], "--topk", "10"),
    "predict-many": lambda s: ("predict", s["out"], *[s["image"]] * 5),
    "predict-ckpt": lambda s: ("predict", s["ckpt"], s["image"], "--topk", "5"),
    "eval": lambda s: ("eval", s["ckpt"], "--data", s["data"], "--plot", s["root"] / "cm[red]\u202e.png"),
    "verify": lambda s: ("verify", s["out"], "--data", s["image"].parent),
    "bench": lambda s: ("bench", s["out"], "--backends", "ort", "--precisions", "fp32", "--warmup", "0", "--iters",
                        "2", "--plot", s["root"] / "b\x1b.png", "--md", s["root"] / "b\u202e.md"),
    "report": lambda s: ("report", s["out"], "--print"),
    "train": lambda s: ("train", "lenet", "--data", s["data"], "--epochs", "1", "--device", "cpu", "--out",
                        s["root"] / "run\x1b[red]"),
}


@pytest.mark.parametrize("command", list(RUNS))
def test_every_sink_shows_hostile_names_as_text(command, hostile_set, monkeypatch):
    """stdout, stderr, report.md and every plot label: no hidden character raw, no markup or mathtext parsed."""
    import matplotlib.figure
    import matplotlib.text

    labels: list[str] = []
    save = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        labels.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    result = invoke(*RUNS[command](hostile_set))
    assert_no_traceback(result)
    assert result.code in (0, 4), result.describe()  # 4: a tiny model on 10 images may miss a tolerance
    sinks = {"output": result.output, **{f"label {i}": t for i, t in enumerate(labels)}}
    report = hostile_set["out"] / "report.md"
    if command == "report":
        sinks["report.md"] = report.read_text()
        assert "<b>" not in sinks["report.md"]
    for where, text in sinks.items():
        found = HIDDEN.search(text)
        assert found is None, f"{command}: {found.group()!r} reached {where} raw: {text[:2000]!r}"
    if command == "eval":
        assert any("$\\frac{$" in t for t in labels), labels  # drawn as typed, not parsed as mathtext
