"""Results that look right and are not (issue 22, class 5): a model or folder whose numbers cannot be trusted is
refused in one line -- never ranked, printed and exited 0."""

from __future__ import annotations

import hashlib
import json

import pytest
from _hostile import assert_folder_consistent, assert_refused, edit_manifest, invoke


def _nan_weights(tmp_path, lenet_ckpt, **_):
    import torch

    ckpt = torch.load(lenet_ckpt, weights_only=True)
    first = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][first] = torch.full_like(ckpt["state_dict"][first], float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(ckpt, path)
    return ("predict", path)


def _inf_safetensors(tmp_path, lenet_ckpt, **_):
    import torch
    from safetensors.torch import save_file

    state = torch.load(lenet_ckpt, weights_only=True)["state_dict"]
    state = {k: (torch.full_like(v, float("inf")) if k.endswith("bias") and v.is_floating_point() else v)
             for k, v in state.items()}
    path = tmp_path / "inf.safetensors"
    save_file(state, str(path))
    return ("predict", path, "--arch", "lenet", "--input-shape", "1,28,28")


def _reordered_classes(export_copy, **_):
    edit_manifest(export_copy, lambda d: d["model"].update(class_names=d["model"]["class_names"][::-1]))
    return ("predict", export_copy)


def _changed_mean(export_copy, **_):
    edit_manifest(export_copy, lambda d: d["preprocess"].update(mean=[0.9]))
    return ("eval", export_copy, "--data", "digits")


def _zeroed_external_data(export_copy, **_):
    import onnx

    model = onnx.load(str(export_copy / "model.onnx"))
    onnx.save(model, str(export_copy / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=1024)

    def sha(name):
        return hashlib.sha256((export_copy / name).read_bytes()).hexdigest()

    def patch(d):  # what a re-export would record: the graph and its data file
        for art in d["artifacts"]:
            if art["path"] == "model.onnx":
                art.update(sha256=sha("model.onnx"), bytes=(export_copy / "model.onnx").stat().st_size,
                           external_data=[{"path": "model.onnx.data", "sha256": sha("model.onnx.data")}])

    edit_manifest(export_copy, patch)
    assert invoke("predict", export_copy, export_copy.parent / "img.png").code == 0  # listed and intact: runs
    data = export_copy / "model.onnx.data"
    data.write_bytes(bytes(data.stat().st_size))
    return ("predict", export_copy)


def _unlisted_external_data(export_copy, **_):
    _zeroed_external_data(export_copy)
    edit_manifest(export_copy, lambda d: [a.pop("external_data", None) for a in d["artifacts"]])
    return ("verify", export_copy, "--data", export_copy.parent / "imgs")


def _duplicate_labels(lenet_ckpt, tmp_path, **_):
    return ("export", lenet_ckpt, "--out", tmp_path / "dup", "--no-verify", "--labels", "a,b,c,d,e,f,g,h,a,j")


def _duplicate_in_manifest(export_copy, **_):
    edit_manifest(export_copy, lambda d: d["model"].update(class_names=["x"] * 10))
    return ("report", export_copy)


def _out_of_range_checkpoint_field(lenet_ckpt, tmp_path, **_):
    import torch

    ckpt = torch.load(lenet_ckpt, weights_only=True)
    ckpt["best_val_acc"] = 500.0
    path = tmp_path / "acc500.pth"
    torch.save(ckpt, path)
    return ("export", path, "--out", tmp_path / "acc", "--no-verify")


CASES = {"nan-weights": _nan_weights, "inf-safetensors": _inf_safetensors, "reordered-classes": _reordered_classes,
         "changed-mean": _changed_mean, "zeroed-external-data": _zeroed_external_data,
         "unlisted-external-data": _unlisted_external_data, "duplicate-labels": _duplicate_labels,
         "duplicate-names-in-manifest": _duplicate_in_manifest,
         "checkpoint-field-out-of-range": _out_of_range_checkpoint_field}


@pytest.mark.parametrize("case", list(CASES))
def test_untrustworthy_result_refused(case, export_copy, lenet_ckpt, image, tmp_path):
    import shutil

    shutil.copy(image, export_copy.parent / "img.png")
    (export_copy.parent / "imgs").mkdir(exist_ok=True)
    shutil.copy(image, export_copy.parent / "imgs" / "img.png")
    args = CASES[case](export_copy=export_copy, lenet_ckpt=lenet_ckpt, tmp_path=tmp_path)
    if args[0] == "predict":
        args = (*args, image, "--json")
    result = invoke(*args)
    assert_refused(result)
    assert '"probability": null' not in result.output and "NaN" not in result.stdout, result.describe()
    if case == "checkpoint-field-out-of-range":
        assert not (tmp_path / "acc").exists()
