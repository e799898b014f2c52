"""Names are text (issue 10, item 5): class names and paths from user files print literally and are escaped in
report.md (no rich markup interpreted, no raw escape sequence reaching the terminal, no raw HTML/Markdown)."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("case", list(MARKUP) + list(ESCAPES))
def test_manifest_names_printed_literally(case, export_copy, image):
    name = {**MARKUP, **ESCAPES}[case]
    edit_manifest(export_copy, lambda d: d["model"].update(class_names=[name] + FILLER))
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
