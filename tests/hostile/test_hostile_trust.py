"""Trust (issue 10, item 1): no code runs from a file or folder unless --allow-pickle / --model-def is typed.

Each payload would create a marker file when unpickled or imported; the marker must never appear, and the
command ends with one line (or, for a folder, falls back to the FP32 ONNX reference and says why).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import pytest
from _hostile import (
    assert_no_traceback,
    assert_ok_or_refused,
    assert_refused,
    edit_manifest,
    invoke,
    payload_bytes,
    rewrite_zip,
)

COMMANDS = ["export", "predict", "eval", "bench", "train-from"]
# Commands that load any program they are given: a refusal there is the trust rule and names --allow-pickle.
# (bench FILE and train --from refuse a clean .pt2 for reasons of their own: fixed batch, not fine-tunable.)
LOADERS = ("export", "predict", "eval")


def _run(command: str, model, tmp_path, image):
    if command == "export":
        return invoke("export", model, "--out", tmp_path / "out", "--no-verify")
    if command == "predict":
        return invoke("predict", model, image)
    if command == "eval":
        return invoke("eval", model, "--data", "digits", "--plot", tmp_path / "c.png")
    if command == "bench":
        return invoke("bench", model, "--backends", "torch,ort", "--precisions", "fp32", "--warmup", "0",
                      "--iters", "2")
    if command == "train-from":
        return invoke("train", "lenet", "--data", "digits", "--epochs", "1", "--from", model, "--out",
                      tmp_path / "run")
    raise AssertionError(command)


def _pt2_sample_inputs(lenet_pt2, tmp_path, marker):
    return rewrite_zip(lenet_pt2, tmp_path / "evil_inputs.pt2",
                       {"data/sample_inputs/model.pt": lambda _: payload_bytes(marker)})


def _pt2_pickled_weight(lenet_pt2, tmp_path, marker):
    def config(data: bytes) -> bytes:
        cfg = json.loads(data)
        entry = cfg["config"]["features.0.weight"]
        entry["use_pickle"] = True
        return json.dumps(cfg).encode()

    with zipfile.ZipFile(lenet_pt2) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        target = json.loads(archive.read(name))["config"]["features.0.weight"]["path_name"]
    return rewrite_zip(lenet_pt2, tmp_path / "evil_weight.pt2",
                       {"model_weights_config.json": config,
                        f"data/weights/{target}": lambda _: payload_bytes(marker)})


def _pickle_pth(tmp_path, marker):
    path = tmp_path / "evil.pth"
    path.write_bytes(payload_bytes(marker))
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_pt2_sample_inputs_payload(command, lenet_pt2, tmp_path, marker, image):
    """A .pt2 whose sample inputs are a pickle payload: loads without unpickling them, or one line naming
    --allow-pickle."""
    model = _pt2_sample_inputs(lenet_pt2, tmp_path, marker)
    result = _run(command, model, tmp_path, image)
    assert not marker.exists(), f"the .pt2 sample-inputs payload ran on `{command}`"
    assert_ok_or_refused(result)
    if result.code != 0 and command in LOADERS:
        assert_refused(result, mention="--allow-pickle")


@pytest.mark.parametrize("command", COMMANDS)
def test_pt2_pickled_weight_payload(command, lenet_pt2, tmp_path, marker, image):
    """A .pt2 whose weights config marks a weight use_pickle: true, that weight a pickle payload."""
    model = _pt2_pickled_weight(lenet_pt2, tmp_path, marker)
    result = _run(command, model, tmp_path, image)
    assert not marker.exists(), f"the .pt2 pickled-weight payload ran on `{command}`"
    assert_ok_or_refused(result)
    if result.code != 0 and command in LOADERS:
        assert_refused(result, mention="--allow-pickle")


@pytest.mark.parametrize("command", COMMANDS)
def test_plain_pickle_payload(command, tmp_path, marker, image):
    """A .pth pickle of os.system: refused with one line that points at --allow-pickle (not "corrupt")."""
    model = _pickle_pth(tmp_path, marker)
    result = _run(command, model, tmp_path, image)
    assert not marker.exists(), f"the pickle payload ran on `{command}`"
    assert_refused(result, mention="--allow-pickle", not_mention="corrupt")


# -- a folder's manifest is data: its allow_pickle / model_def are never honoured by themselves ------------------
def _evil_folder(export_copy, marker, state_dict, *, how: str, relative: bool):
    folder = export_copy
    if how == "allow_pickle":
        evil = folder / "evil.pth"
        evil.write_bytes(payload_bytes(marker))
        options_patch = {"allow_pickle": True}
    else:  # model_def: a .py shipped in the folder whose import runs code
        evil = folder / "weights.pth"
        shutil.copy(state_dict, evil)
        code = folder / "evil_def.py"
        code.write_text(f"open({str(marker)!r}, 'w').close()\n"
                        "from deploykit.models.registry import build_model\n"
                        "def factory(**kw):\n    return build_model('lenet', num_classes=10)\n")
        options_patch = {"model_def": f"{'evil_def.py' if relative else code}:factory", "allow_pickle": False}
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()

    def patch(data):
        data["source"]["path"] = evil.name if relative else str(evil)
        data["source"]["sha256"] = digest
        data["source"]["kind"] = "pickled-module" if how == "allow_pickle" else "model-def"
        data["source"]["options"].update(options_patch)

    edit_manifest(folder, patch)
    return folder


@pytest.mark.parametrize("how", ["allow_pickle", "model_def"])
@pytest.mark.parametrize("relative", [False, True], ids=["abs-source", "rel-source"])
@pytest.mark.parametrize("command", ["verify", "bench"])
def test_manifest_options_not_honoured(command, relative, how, export_copy, marker, digit_images, lenet_state_dict,
                                       monkeypatch):
    """verify DIR / bench DIR on a folder whose deploykit.json asks for pickle or a model_def shipped inside it."""
    folder = _evil_folder(export_copy, marker, lenet_state_dict, how=how, relative=relative)
    if relative:
        monkeypatch.chdir(folder)  # where a relative source path resolves today
    if command == "verify":
        result = invoke("verify", folder, "--data", digit_images)
    else:
        result = invoke("bench", folder, "--backends", "torch,ort", "--precisions", "fp32", "--warmup", "0",
                        "--iters", "2")
    assert not marker.exists(), f"`{command} DIR` ran code named by the folder's manifest ({how})"
    assert_no_traceback(result)
    assert_ok_or_refused(result)


# -- issue 22, class 1: TorchScript and .pt2 are code: only --trust-code (alias --allow-pickle) loads them ----------
@pytest.fixture(scope="module")
def lenet_ts(hostile_root) -> object:
    import torch

    from deploykit.models.registry import build_model

    path = hostile_root / "lenet.ts"
    if not path.exists():
        torch.jit.trace(build_model("lenet", num_classes=10).eval(), torch.zeros(1, 1, 28, 28)).save(str(path))
    return path


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
@pytest.mark.parametrize("command", COMMANDS + ["verify-dir", "bench-dir"])
def test_code_formats_need_trust_code(command, fmt, lenet_ts, lenet_pt2, export_copy, tmp_path, image,
                                      digit_images, monkeypatch):
    """No torch loader that runs a file's code (torch.jit.load, torch.export.load) is called unless the command line
    says --trust-code; a manifest whose source is such a file never grants it (whatever kind it records)."""
    import torch

    model = lenet_ts if fmt == "torchscript" else lenet_pt2
    called = []
    for owner, name in ((torch.jit, "load"), (torch.export, "load")):
        monkeypatch.setattr(owner, name, lambda *a, _n=name, **k: called.append(_n) or (_ for _ in ()).throw(
            AssertionError("a code-running loader was called")))
    if command.endswith("-dir"):
        shutil.copy(model, export_copy / model.name)
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        edit_manifest(export_copy, lambda d: d["source"].update(path=model.name, sha256=digest, kind="state_dict"))
        result = (invoke("verify", export_copy, "--data", digit_images) if command == "verify-dir" else
                  invoke("bench", export_copy, "--backends", "torch,ort", "--precisions", "fp32", "--warmup", "0",
                         "--iters", "2"))
    else:
        result = _run(command, model, tmp_path, image)
    assert not called, f"`{command}` loaded a {fmt} file without --trust-code"
    assert_ok_or_refused(result)
    if command in LOADERS:
        assert_refused(result, mention="--trust-code")
