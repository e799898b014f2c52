"""Numbers must be finite (issue 10, item 3): NaN/inf options are refused, and the JSON deploykit prints and
writes is strict JSON (no NaN / Infinity), parsed here with a parse_constant that rejects them."""

from __future__ import annotations

import pytest
from _hostile import assert_no_traceback, assert_ok_or_refused, assert_refused, edit_manifest, invoke, strict_json

BAD_FLOATS = [("--mean", "nan"), ("--mean", "inf"), ("--std", "nan"), ("--std", "inf"), ("--mean", "-inf")]


@pytest.mark.parametrize("flag,value", BAD_FLOATS, ids=[f"{f[2:]}-{v}" for f, v in BAD_FLOATS])
def test_non_finite_mean_std_refused(flag, value, lenet_ckpt, tmp_path):
    out = tmp_path / "out"
    result = invoke("export", lenet_ckpt, "--out", out, flag, value, "--no-verify")
    assert_refused(result)
    assert not (out / "deploykit.json").exists()


def test_manifest_written_is_strict_json(base_export):
    strict_json((base_export / "deploykit.json").read_text())


def test_predict_json_is_strict(base_export, image):
    result = invoke("predict", base_export, image, "--json")
    assert_no_traceback(result)
    assert result.code == 0, result.describe()
    strict_json(result.stdout)


def test_verify_json_is_strict(export_copy, digit_images):
    result = invoke("verify", export_copy, "--data", digit_images, "--json")
    assert_no_traceback(result)
    assert result.code == 0, result.describe()
    strict_json(result.stdout)


@pytest.mark.parametrize("field,value", [("mean", float("nan")), ("std", float("inf"))], ids=["mean-nan", "std-inf"])
def test_predict_json_non_finite_manifest(field, value, export_copy, image):
    """A manifest with a NaN/inf mean/std: refused in one line, or (if it ran) the printed JSON is still strict."""
    edit_manifest(export_copy, lambda d: d["preprocess"].update({field: [value]}))
    result = invoke("predict", export_copy, image, "--json")
    assert_ok_or_refused(result)
    if result.code == 0:
        strict_json(result.stdout)


def test_verify_json_nan_reference(export_copy, digit_images):
    """A manifest std of 1e-300 makes every logit overflow to inf/NaN: refused, or verify --json stays strict."""
    edit_manifest(export_copy, lambda d: d["preprocess"].update(std=[1e-300]))
    result = invoke("verify", export_copy, "--data", digit_images, "--json")
    assert_ok_or_refused(result)
    if result.stdout.strip().startswith("{"):
        strict_json(result.stdout)
