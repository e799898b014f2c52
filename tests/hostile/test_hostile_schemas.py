"""Schemas at every boundary (issue 10, item 3): files deploykit reads are validated, a bad one is one line.

deploykit.json (missing keys, wrong types, deep nesting, huge numbers, NaN), ONNX metadata_props, deploykit
checkpoints with wrong field types, corrupt calibration caches and bench.json given to `report`.
"""

from __future__ import annotations

import json
import shutil

import pytest
from _hostile import assert_folder_consistent, assert_ok_or_refused, assert_refused, deep_list, invoke

HUGE_INT = "9" * 5000


def _set(path: list, value):
    def patch(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return data
    return patch


def _drop(*path):
    def patch(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return data
    return patch


# Each mutation returns the manifest's new text (some are not expressible as a dict: deep nesting, huge ints).
MANIFESTS = {
    "not-an-object": lambda text, d: "[1, 2, 3]",
    "missing-model": lambda text, d: json.dumps(_drop("model")(d)),
    "missing-preprocess": lambda text, d: json.dumps(_drop("preprocess")(d)),
    "missing-artifact-path": lambda text, d: json.dumps(_drop("artifacts", 0, "path")(d)),
    "artifacts-a-string": lambda text, d: json.dumps(_set(["artifacts"], "model.onnx")(d)),
    "artifact-path-int": lambda text, d: json.dumps(_set(["artifacts", 0, "path"], 5)(d)),
    "source-a-list": lambda text, d: json.dumps(_set(["source"], [])(d)),
    "height-string": lambda text, d: json.dumps(_set(["preprocess", "height"], "big")(d)),
    "mean-nan": lambda text, d: json.dumps(_set(["preprocess", "mean"], [float("nan")])(d)),
    "std-1e999": lambda text, d: json.dumps(_set(["preprocess", "std"], ["__INF__"])(d)).replace('"__INF__"', "1e999"),
    "height-5000-digits": lambda text, d: json.dumps(_set(["preprocess", "height"], "__BIG__")(d)).replace(
        '"__BIG__"', HUGE_INT),
    "class-names-dict": lambda text, d: json.dumps(_set(["model", "class_names"], {"a": 1})(d)),
    "class-names-ints": lambda text, d: json.dumps(_set(["model", "class_names"], list(range(10)))(d)),
    "deep-nesting": lambda text, d: json.dumps(_set(["model", "class_names"], "__DEEP__")(d)).replace(
        '"__DEEP__"', deep_list(100_000)),
}
READERS = ["predict", "verify", "report"]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("mutation", list(MANIFESTS))
def test_malformed_manifest(mutation, reader, export_copy, image, digit_images):
    path = export_copy / "deploykit.json"
    text = path.read_text()
    path.write_text(MANIFESTS[mutation](text, json.loads(text)))
    if reader == "predict":
        result = invoke("predict", export_copy, image)
    elif reader == "verify":
        result = invoke("verify", export_copy, "--data", digit_images)
    else:
        result = invoke("report", export_copy)
    assert_refused(result)


# -- ONNX metadata_props (an .onnx file without its manifest: predict reads the metadata) -------------------------
def _preprocess(**changes):
    base = {"channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081], "resize": None,
            "interpolation": "bilinear", "layout": "NCHW"}
    return json.dumps({**base, **changes})


METADATA = {
    "preprocess-not-json": {"deploykit.preprocess": "{not json"},
    "preprocess-a-list": {"deploykit.preprocess": "[]"},
    "preprocess-channels-string": {"deploykit.preprocess": _preprocess(channels="one")},
    "preprocess-missing-height": {"deploykit.preprocess": json.dumps({"channels": 1, "width": 28})},
    "preprocess-mean-nan": {"deploykit.preprocess": _preprocess(mean=[float("nan")])},
    "class-names-not-json": {"deploykit.class_names": "a,b,c"},
    "class-names-object": {"deploykit.class_names": '{"a": 1}'},
    "class-names-deep": {"deploykit.class_names": deep_list(100_000)},
}


@pytest.mark.parametrize("case", list(METADATA))
def test_malformed_onnx_metadata(case, base_export, tmp_path, image):
    import onnx

    model = onnx.load(str(base_export / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(METADATA[case])
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "model.onnx"  # alone: no deploykit.json beside it
    onnx.save(model, str(path))
    result = invoke("predict", path, image)
    assert_refused(result)


# -- deploykit checkpoints with wrong field types -----------------------------------------------------------------
CHECKPOINTS = {
    "arch-int": {"arch": 5},
    "arch-list": {"arch": ["lenet"]},
    "num-classes-string": {"num_classes": "ten"},
    "num-classes-negative": {"num_classes": -3},
    "preprocess-string": {"preprocess": "bilinear"},
    "preprocess-missing-keys": {"preprocess": {"channels": 1}},
    "class-names-int": {"class_names": 5},
    "state-dict-string": {"state_dict": "weights"},
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_malformed_deploykit_checkpoint(case, lenet_ckpt, tmp_path, image):
    import torch

    payload = torch.load(lenet_ckpt, weights_only=True)
    payload.update(CHECKPOINTS[case])
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    result = invoke("predict", path, image)
    assert_refused(result)


# -- corrupt calibration caches ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_export(base_export, lenet_ckpt, digit_images, tmp_path_factory):
    """An export folder with model.int8-cpu.onnx and its calibration cache (minmax, 8 images)."""
    out = tmp_path_factory.mktemp("int8") / "exp"
    result = invoke("export", lenet_ckpt, "--out", out, "--int8", "--int8-for", "cpu", "--calib", digit_images,
                    "--calib-method", "minmax", "--min-calib", "4", "--no-verify")
    assert result.code == 0, result.describe()
    assert list(out.glob("calib-*.json")), sorted(p.name for p in out.iterdir())
    return out


CACHES = {
    "n-images-string": lambda d: {**d, "n_images": "many"},
    "tensors-a-list": lambda d: {**d, "tensors": [1, 2]},
    "amax-string": lambda d: {**d, "tensors": {k: {**v, "amax": "big"} for k, v in d["tensors"].items()}},
    "amax-missing": lambda d: {**d, "tensors": {k: {} for k in d["tensors"]}},
    "not-an-object": lambda d: [d],
    "drift-not-a-bias": lambda d: {**d, "drift": {"no-such-layer": [1.0]}},
    "drift-strings": lambda d: {**d, "drift": {k: ["x"] * len(v) for k, v in (d.get("bias") or {"a": [0]}).items()}},
    "drift-a-list": lambda d: {**d, "drift": [1.0]},
    "cpu-drift-not-a-bias": lambda d: {**d, "drift_cpu": {"no-such-layer": [1.0]}},
    "cpu-bias-nan": lambda d: {**d, "bias_cpu": {k: [float("nan")] * len(v)
                                                 for k, v in (d.get("bias_cpu") or {"a": [0]}).items()}},
    "cpu-bias-a-string": lambda d: {**d, "bias_cpu": "shifts"},
}


@pytest.mark.parametrize("case", list(CACHES))
def test_corrupt_calibration_cache(case, int8_export, lenet_ckpt, digit_images, tmp_path):
    """A re-export that meets a corrupt calib-*.json: recalibrates (ignoring it) or refuses in one line."""
    folder = tmp_path / "exp"
    shutil.copytree(int8_export, folder)
    cache = next(folder.glob("calib-*.json"))
    cache.write_text(json.dumps(CACHES[case](json.loads(cache.read_text()))))
    result = invoke("export", lenet_ckpt, "--out", folder, "--int8", "--int8-for", "cpu", "--calib", digit_images,
                    "--calib-method", "minmax", "--min-calib", "4", "--no-verify")
    assert_ok_or_refused(result)
    assert_folder_consistent(folder)


# -- bench.json given to `report` -----------------------------------------------------------------------------------
BENCH = {
    "results-ints": {"host": {}, "results": [1, 2]},
    "latency-a-string": {"host": {}, "results": [{"backend": "ort", "latency_ms": "fast"}]},
    "p50-a-string": {"host": {}, "results": [{"backend": "ort", "latency_ms": {"p50": "fast"}}]},
    "backend-a-dict": {"host": {}, "results": [{"backend": {"x": 1}, "latency_ms": {"p50": 1.0}}]},
    "host-a-list": {"host": [], "results": []},
    "skipped-an-int": {"host": {"skipped": 5}, "results": []},
    "versions-a-string": {"host": {"versions": "x"}, "results": []},
    "throughput-string": {"host": {}, "results": [{"backend": "ort", "throughput": "lots"}]},
}


@pytest.mark.parametrize("case", list(BENCH))
def test_malformed_bench_json(case, export_copy, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(BENCH[case]))
    result = invoke("report", export_copy, "--bench", bench)
    assert_refused(result)
