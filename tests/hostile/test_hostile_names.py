"""Names are text (issue 10, item 5): class names and paths from user files print literally and are escaped in
report.md (no rich markup interpreted, no raw escape sequence reaching the terminal, no raw HTML/Markdown)."""

from __future__ import annotations

import json

import pytest
from _hostile import assert_no_traceback, edit_manifest, invoke

NAMES = {
    "markup-red": "[red]x[/red]",
    "markup-bogus-close": "[/bogus]",
    "markup-link": "[link=http://e]x[/link]",
    "ansi-colour": "\x1b[31mred",
    "osc8-hyperlink": "\x1b]8;;http://e\x1b\\link",
}
FILLER = [f"c{i}" for i in range(1, 10)]


def _check_literal(result, names):
    assert_no_traceback(result)
    assert result.code == 0, result.describe()
    assert "\x1b" not in result.output, f"a raw escape sequence reached the terminal: {result.output!r}"
    for name in names:
        if "\x1b" not in name:
            assert name in result.output, f"{name!r} was not printed literally: {result.output!r}"


@pytest.mark.parametrize("case", list(NAMES))
def test_manifest_names_printed_literally(case, export_copy, image):
    edit_manifest(export_copy, lambda d: d["model"].update(class_names=[NAMES[case]] + FILLER))
    result = invoke("predict", export_copy, image, "--topk", "10")
    _check_literal(result, [NAMES[case]])


def test_labels_flag_names_printed_literally(lenet_ckpt, digit_images, tmp_path, image):
    """The same names given with --labels to export, then predict on the folder."""
    labels = tmp_path / "labels.txt"
    names = list(NAMES.values()) + FILLER[:5]
    labels.write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    exported = invoke("export", lenet_ckpt, "--out", out, "--labels", labels, "--data", digit_images)
    assert_no_traceback(exported)
    assert exported.code == 0, exported.describe()
    _check_literal(invoke("predict", out, image, "--topk", "10"), names)


def test_onnx_metadata_names_printed_literally(base_export, tmp_path, image):
    import onnx

    model = onnx.load(str(base_export / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "deploykit.class_names":
            prop.value = json.dumps(list(NAMES.values()) + FILLER[:5])
    onnx.save(model, str(tmp_path / "alone.onnx"))
    _check_literal(invoke("predict", tmp_path / "alone.onnx", image, "--topk", "10"), list(NAMES.values()))


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
