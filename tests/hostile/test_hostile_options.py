"""Smaller option checks (issue 10, "What is wrong today" item 7): each bad value is one line, nothing silently
changed, and a --model-def factory's misbehaviour is reported, never a traceback or a silent exit 0."""

from __future__ import annotations

import os

import pytest
from _hostile import assert_ok_or_refused, assert_refused, invoke


@pytest.mark.parametrize("labels", ["a,b,c", "0,1,2,3,4,5,6,7,8,8"], ids=["count-3-of-10", "duplicate"])
def test_bad_labels_refused(labels, lenet_ckpt, tmp_path):
    result = invoke("export", lenet_ckpt, "--out", tmp_path / "out", "--labels", labels, "--no-verify")
    assert_refused(result)


def test_binary_labels_file_refused(lenet_ckpt, tmp_path):
    labels = tmp_path / "labels.bin"
    labels.write_bytes(b"\xff\xfe\x00\x81" + os.urandom(256))
    result = invoke("export", lenet_ckpt, "--out", tmp_path / "out", "--labels", labels, "--no-verify")
    assert_refused(result)


@pytest.mark.parametrize("opset", [13, 16])
def test_opset_refused_or_honoured(opset, lenet_ckpt, tmp_path):
    import onnx

    out = tmp_path / "out"
    result = invoke("export", lenet_ckpt, "--out", out, "--opset", opset, "--no-verify")
    assert_ok_or_refused(result)
    if result.code == 0:
        model = onnx.load(str(out / "model.onnx"), load_external_data=False)
        written = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert written == opset, f"--opset {opset} silently became {written}"


@pytest.mark.parametrize("value", ["5", "nan", "-1"])
def test_int8_agreement_out_of_range_refused(value, export_copy, digit_images):
    result = invoke("verify", export_copy, "--data", digit_images, "--int8-agreement", value)
    assert_refused(result)


def test_negative_resize_refused(lenet_ckpt, tmp_path):
    result = invoke("export", lenet_ckpt, "--out", tmp_path / "out", "--resize", "-5", "--no-verify")
    assert_refused(result)


MODEL_DEFS = {
    "returns-none": "def factory(**kw):\n    return None\n",
    "calls-sys-exit-0": "import sys\n\ndef factory(**kw):\n    sys.exit(0)\n",
}


@pytest.mark.parametrize("case", list(MODEL_DEFS))
def test_model_def_factory_misbehaves(case, lenet_state_dict, tmp_path):
    code = tmp_path / "net.py"
    code.write_text(MODEL_DEFS[case])
    out = tmp_path / "out"
    result = invoke("export", lenet_state_dict, "--out", out, "--model-def", f"{code}:factory",
                    "--input-shape", "1,28,28", "--no-verify")
    assert result.code != 0, f"export exited 0 although the factory gave no model: {result.describe()}"
    assert_refused(result)
