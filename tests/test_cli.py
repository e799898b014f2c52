"""The commands end to end through typer's CliRunner: contracts (paths, JSON keys, exit codes) and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision

from deploykit.files import sha256_file
from deploykit.manifest import Manifest

METRIC_KEYS = {"max_abs_diff", "mean_abs_diff", "cosine_min", "top1_agreement", "top5_agreement", "max_rel_diff",
               "reference_max_abs", "cosine_mean"}
SAMPLE_KEYS = {"n", "top1_agreement_ci95"}  # the verdict's sample size and the 95% interval it allows


def _one_line_error(result, code=1, contains=""):
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert contains in lines[0], lines[0]


def test_headline_resnet34_state_dict(cli, tmp_path):
    """`deploykit export resnet34.pth` on a 5-class torchvision ResNet-34 state_dict, no other flag."""
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34(num_classes=5).state_dict(), "resnet34.pth")
    result = cli("export", "resnet34.pth")
    assert result.exit_code == 0, result.output
    folder = Path("exports/resnet34")
    model = onnx.load(folder / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]

    manifest = json.loads((folder / "deploykit.json").read_text())
    assert manifest["source"]["sha256"] == sha256_file(Path("resnet34.pth"))
    assert manifest["model"]["arch"] == "resnet34" and manifest["model"]["num_classes"] == 5
    assert manifest["input"] == {"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32",
                                 "dynamic_batch": False}
    assert manifest["preprocess"]["resize"] == 256 and manifest["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["opset"] == 18
    assert {"torch", "onnx", "onnxruntime", "deploykit"} <= set(manifest["versions"])
    parity = manifest["artifacts"][0]["parity"]
    assert parity["passed"] and parity["metrics"]["max_abs_diff"] < 1e-3

    result = cli("verify", folder, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"artifacts", "reference", "data"}  # issue 23 added reference and data
    assert report["reference"] == "pytorch-recorded" and report["data"]["n_images"] == parity["n_images"]
    (art,) = report["artifacts"]
    assert set(art) == {"path", "precision", "metrics", "passed"}
    assert (art["path"], art["precision"], art["passed"]) == ("model.onnx", "fp32", True)
    floats = {k: v for k, v in art["metrics"].items() if k not in SAMPLE_KEYS}
    assert set(floats) == METRIC_KEYS and all(isinstance(v, float) for v in floats.values())
    n, (lo, hi) = art["metrics"]["n"], art["metrics"]["top1_agreement_ci95"]
    assert isinstance(n, int) and n >= 1 and 0.0 <= lo <= art["metrics"]["top1_agreement"] <= hi <= 1.0


def test_export_options_predict_and_labelled_verify(cli, resnet18_sd, photos, tmp_path):
    out = tmp_path / "r18"
    result = cli("export", resnet18_sd, "--out", out, "--input-shape", "3,64,64", "--dynamic-batch",
                 "--labels", "cat,dog,astronaut,coffee,rocket", "--data", photos, "--opset", "18")
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.input["shape"] == [None, 3, 64, 64] and manifest.input["dynamic_batch"]
    assert manifest.preprocessing.resize == 73  # 64 * 256/224: the crop ratio is kept
    assert manifest.artifacts[0]["parity"]["n_images"] == 7
    # the last line: the total of the manifest's seconds per stage (printed unwrapped)
    last = result.output.strip().splitlines()[-1].split()
    assert last[:2] == ["export", "took"] and float(last[2]) == pytest.approx(sum(manifest.timings.values()), abs=0.06)
    assert {"load", "onnx", "verify"} <= set(manifest.timings)

    result = cli("predict", out, photos / "chelsea.png", photos / "camera_gray.bmp", "--topk", "3", "--json")
    assert result.exit_code == 0, result.output
    preds = json.loads(result.stdout)["predictions"]
    assert len(preds) == 2 and len(preds[0]["top"]) == 3
    assert preds[0]["top"][0]["label"] in {"cat", "dog", "astronaut", "coffee", "rocket"}
    # the probabilities are a softmax of the exported model's logits on the manifest's preprocessing, sorted
    import onnxruntime as ort

    batch = manifest.preprocessing.batch([photos / "chelsea.png", photos / "camera_gray.bmp"])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": batch})[0]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for pred, row in zip(preds, probs):
        got = [(t["index"], t["probability"]) for t in pred["top"]]
        assert [i for i, _ in got] == list(np.argsort(-row)[:3])
        assert np.allclose([p for _, p in got], np.sort(row)[::-1][:3], atol=1e-5)
        assert all(a >= b for (_, a), (_, b) in zip(got, got[1:]))
    # the checkpoint gives the same answer as the ONNX file
    ckpt = json.loads(cli("predict", resnet18_sd, photos / "chelsea.png", "--topk", "1", "--json").stdout)
    assert ckpt["predictions"][0]["top"][0]["index"] == preds[0]["top"][0]["index"]

    labelled = tmp_path / "labelled"
    for cls, name in (("cat", "chelsea.png"), ("coffee", "coffee_rgba.png"), ("rocket", "rocket_palette.gif")):
        (labelled / cls).mkdir(parents=True)
        (labelled / cls / name).write_bytes((photos / name).read_bytes())
    report = json.loads(cli("verify", out, "--data", labelled, "--json").stdout)
    metrics = report["artifacts"][0]["metrics"]
    assert {"accuracy", "reference_accuracy", "accuracy_drop"} <= set(metrics)
    assert metrics["accuracy"] == metrics["reference_accuracy"]


def test_verify_fails_with_nonzero_exit_when_out_of_tolerance(cli, resnet18_sd, tmp_path):
    out = tmp_path / "bad"
    assert cli("export", resnet18_sd, "--out", out, "--input-shape", "3,32,32", "--no-verify").exit_code == 0
    # replace the artifact with one whose weights differ: verification must catch it
    model = onnx.load(out / "model.onnx")
    for init in model.graph.initializer:
        if init.name.endswith("fc.weight") or "fc" in init.name and len(init.dims) == 2:
            arr = onnx.numpy_helper.to_array(init) * 1.5
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, out / "model.onnx")
    tampered = cli("verify", out, "--json")  # a file changed behind the manifest's back is refused outright
    _one_line_error(tampered, contains="sha256 differs")
    # an artifact the manifest vouches for (as a faulty converter would write it) is judged and fails the gate
    from deploykit.files import sha256_file

    record = json.loads((out / "deploykit.json").read_text())
    record["artifacts"][0].update(sha256=sha256_file(out / "model.onnx"), bytes=(out / "model.onnx").stat().st_size)
    (out / "deploykit.json").write_text(json.dumps(record))
    result = cli("verify", out, "--json")
    assert result.exit_code == 4
    report = json.loads(result.stdout)
    assert report["artifacts"][0]["passed"] is False


def test_models_lists_the_zoo(cli):
    result = cli("models", "--json")
    assert result.exit_code == 0
    names = {m["name"] for m in json.loads(result.stdout)["models"]}
    assert {"lenet", "resnet34", "inception_v3", "efficientnet_b3"} <= names


def test_pickled_module_error_and_flag(cli, tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=3).eval(), "whole.pth")
    _one_line_error(cli("export", "whole.pth"), contains="--allow-pickle")
    result = cli("export", "whole.pth", "--allow-pickle", "--input-shape", "3,32,32")
    assert result.exit_code == 0, result.output
    # verify judges against the logits recorded at export: no code is run, no flag is needed
    assert cli("verify", "exports/whole").exit_code == 0
    # a manifest never grants --allow-pickle by itself: the user repeats the flag to reload the reference
    _one_line_error(cli("verify", "exports/whole", "--recheck-reference"),
                    contains="pass --trust-code (or --allow-pickle) again")
    assert cli("verify", "exports/whole", "--recheck-reference", "--allow-pickle").exit_code == 0


def test_model_def_through_cli(cli, tmp_path):
    from test_loading import MODEL_PY, Tiny

    Path("net.py").write_text(MODEL_PY)
    torch.save(Tiny(num_classes=4, width=6).state_dict(), "tiny.pth")
    result = cli("export", "tiny.pth", "--model-def", "net.py:build", "--model-kwargs",
                 '{"num_classes": 4, "width": 6}', "--input-shape", "3,32,32", "--mean", "0.5,0.5,0.5",
                 "--std", "0.5,0.5,0.5", "--resize", "0")
    assert result.exit_code == 0, result.output
    assert Manifest.load(Path("exports/tiny")).preprocessing.resize is None
    assert cli("verify", "exports/tiny").exit_code == 0  # against the recorded logits: no code run
    _one_line_error(cli("verify", "exports/tiny", "--recheck-reference"), contains="pass --model-def again")
    assert cli("verify", "exports/tiny", "--recheck-reference", "--model-def", "net.py:build").exit_code == 0


@pytest.mark.parametrize("args,contains", [
    (["export", "missing.pth"], "not found"),
    (["export", "corrupt.pth"], "corrupt"),
    (["export", "r18.pth", "--arch", "resnet99"], "unknown architecture"),
    (["export", "r18.pth", "--arch", "resnet50"], "does not fit resnet50"),
    (["export", "r18.pth", "--input-shape", "3,224"], "--input-shape"),
    (["export", "r18.pth", "--mean", "0.5"], "--mean/--std"),
    (["export", "r18.pth", "--model-kwargs", "{nope"], "--model-kwargs"),
    (["export", "r18.pth", "--data", "empty"], "no readable images"),
    (["export", "r18.pth", "--out", "blocker/sub"], "cannot create output folder"),
    (["verify", "nowhere"], "not found: nowhere"),
    (["verify", "empty"], "not an export folder"),
    (["predict", "missing.onnx", "x.png"], "not found"),
])
def test_user_errors_are_one_line(cli, resnet18_sd, args, contains):
    Path("r18.pth").write_bytes(resnet18_sd.read_bytes())
    Path("corrupt.pth").write_bytes(resnet18_sd.read_bytes()[:1000])
    Path("empty").mkdir()
    Path("blocker").write_text("a file where a folder should be")
    _one_line_error(cli(*args), contains=contains)


def test_interrupted_export_leaves_no_partial_model(cli, resnet18_sd, monkeypatch):
    """A crash while writing leaves neither a truncated model.onnx nor temp files."""
    import onnx as onnx_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_module.checker, "check_model", explode)
    with pytest.raises(KeyboardInterrupt):
        from deploykit.models.loading import load_model
        from deploykit.export import export_onnx

        export_onnx(load_model(resnet18_sd), Path("out/model.onnx"))
    assert list(Path("out").iterdir()) == []


def test_python_dash_m(resnet18_sd):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "deploykit", "models", "--json"], capture_output=True, text=True)
    assert done.returncode == 0 and "resnet34" in done.stdout


def test_exported_program_traced_at_batch_one(cli, photos):
    """A .pt2 traced at batch 1 guards its batch size: the runner feeds it one image at a time."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 32, 32),)), "tiny.pt2")
    assert cli("export", "tiny.pt2", "--out", "ep").exit_code == 1  # a .pt2 is code: only with --trust-code
    result = cli("export", "tiny.pt2", "--out", "ep", "--trust-code")
    assert result.exit_code == 0, result.output
    parity = Manifest.load(Path("ep")).artifacts[0]["parity"]
    assert parity["passed"] and parity["n_images"] > 1
    assert cli("verify", "ep", "--trust-code").exit_code == 0  # the .pt2 reference is code: only when trusted
    images = (photos / "chelsea.png", photos / "astronaut.jpg")
    result = cli("predict", "tiny.pt2", *images, "--topk", "2", "--json", "--allow-pickle")
    assert result.exit_code == 0, result.output
    preds = json.loads(result.stdout)["predictions"]
    onnx_preds = json.loads(cli("predict", "ep", *images, "--topk", "2", "--json").stdout)["predictions"]
    assert len(preds) == 2
    for a, b in zip(preds, onnx_preds):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert np.allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]], atol=1e-5)


NET28_PY = """
import torch.nn as nn

def build(num_classes=10):
    # only a 1x28x28 input reaches the Linear layer with 4*26*26 features
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, num_classes))
"""


@pytest.mark.parametrize("extra,shape", [([], "3x224x224"), (["--input-shape", "1,5,5"], "1x5x5")])
def test_model_for_another_input_size_is_one_line(cli, extra, shape):
    import importlib.util

    Path("net28.py").write_text(NET28_PY)
    spec = importlib.util.spec_from_file_location("net28", "net28.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.build().state_dict(), "net28.pth")
    result = cli("export", "net28.pth", "--model-def", "net28.py:build", *extra)
    _one_line_error(result, contains=f"rejects a {shape} input")
    assert "--input-shape C,H,W" in result.output
    assert cli("export", "net28.pth", "--model-def", "net28.py:build", "--input-shape", "1,28,28",
               "--no-verify").exit_code == 0


def test_reexport_removes_stale_artifacts(cli, resnet18_sd):
    result = cli("export", resnet18_sd, "--out", "ex", "--input-shape", "3,32,32", "--fp16", "--no-verify")
    assert result.exit_code == 0, result.output
    assert Path("ex/model.fp16.onnx").is_file()
    Path("ex/model.fp16.engine").write_bytes(b"not listed in deploykit.json: the user's, so kept")
    Path("ex/calib-entropy-0123456789abcdef.json").write_text("{}")  # keyed: reused when graph and images match
    Path("ex/notes.txt").write_text("the user's own file")
    result = cli("export", resnet18_sd, "--out", "ex", "--input-shape", "3,32,32", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "model.fp16.onnx" in result.output
    assert sorted(p.name for p in Path("ex").iterdir()) == [
        "calib-entropy-0123456789abcdef.json", "deploykit.json", "model.fp16.engine", "model.onnx", "notes.txt"]
    assert not list(Path(".").glob(".ex.deploykit-*"))  # no staging folder or lock left beside it
    assert [a["path"] for a in Manifest.load(Path("ex")).artifacts] == ["model.onnx"]


def test_a_misspelt_arch_suggests_the_nearest_number_first():
    """`--arch resnet35`: resnet34 before resnet50 (difflib alone ranks the tie by name, backwards; issue 25)."""
    from deploykit.errors import InputError
    from deploykit.models import get_spec

    with pytest.raises(InputError, match=r"did you mean resnet34, resnet50"):
        get_spec("resnet35")
    with pytest.raises(InputError, match=r"did you mean efficientnet_b7,"):
        get_spec("efficientnet_b8")


def test_export_refuses_a_bad_out_before_loading_the_model(cli, tmp_path, monkeypatch):
    """`--out notes.txt` and an export already running into --out are refused before the model loads (issue 25:
    they came after 7-8 s of loading)."""
    import deploykit.pipeline as pipeline
    from deploykit.folder import folder_lock

    def never(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(pipeline, "load_model", never)
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("export", tmp_path / "whatever.pt", "--out", tmp_path / "notes.txt")
    assert result.exit_code == 1 and "is not a folder" in result.output, result.output
    with folder_lock(tmp_path / "busy"):
        result = cli("export", tmp_path / "whatever.pt", "--out", tmp_path / "busy")
    assert result.exit_code == 1 and "another deploykit export is writing" in result.output, result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
