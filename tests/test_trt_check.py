"""`deploykit check` and the TensorRT operator-table check: real graphs (the LeNet export folder, graphs built with
onnx.helper that carry one known unsupported construct each), verdicts read as data or JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.errors import EngineBuildError, InputError
from deploykit.files import sha256_file
from deploykit.manifest import Manifest
from deploykit.tensorrt.check import (DEFAULT_TARGETS, check_model, check_path, known_targets, parse_targets,
                                      resolve_target)

LENET = Path(__file__).resolve().parent / "data" / "lenet_export"


def _model(nodes, inits=(), opset=18, inputs=None, outputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _qdq(zero_point=0, scale=0.05, axis=None, scale_shape=()):
    scale_arr = np.full(scale_shape, scale, np.float32)
    zp = np.full(scale_shape, zero_point, np.int8)
    kw = {} if axis is None else {"axis": axis}
    return _model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw),
                   helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw)],
                  [numpy_helper.from_array(scale_arr, "s"), numpy_helper.from_array(zp, "z")])


def test_every_target_names_a_published_table_with_its_source():
    from deploykit.tensorrt.capabilities_data import DATA

    for version, table in DATA["tables"].items():
        assert table["source"]["repo"] == "onnx/onnx-tensorrt" and table["source"]["date"], version
        assert table["opset"][0] <= 18 <= table["opset"][1]
        assert {"Conv", "QuantizeLinear", "DequantizeLinear", "Resize"} <= set(table["operators"])
    assert set(DEFAULT_TARGETS) <= set(known_targets())
    for version in known_targets():
        target = resolve_target(version)
        assert target.table in DATA["tables"]
        assert (target.gap is None) == (target.table == version)  # a borrowed table is always said so
    assert resolve_target("10.3.0.26").table == "10.1" and resolve_target("10.3").typing == "weak"
    assert resolve_target("10.15").gap is None and resolve_target("10.13").typing == "strong"
    assert resolve_target("11.4").table == "10.15" and resolve_target("11.4").typing == "strong-only"
    for bad in ("9.0", "eleven", ""):
        with pytest.raises(InputError):
            parse_targets(bad) if bad else resolve_target(bad)


def test_the_lenet_export_is_ready_for_jetpack6_and_11x_and_its_cpu_graph_is_not_for_tensorrt():
    checks = check_path(LENET, parse_targets(None))
    by_path = {c.path: c for c in checks}
    assert set(by_path) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"}
    assert by_path["model.int8-cpu.onnx"].skipped and not by_path["model.int8-cpu.onnx"].verdicts
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        assert set(by_path[name].verdicts) == {"10.3", "11.5"}
        for verdict in by_path[name].verdicts.values():
            assert verdict.ready, (name, verdict.problems)
    weak = by_path["model.int8.onnx"].verdicts["10.3"].notes
    assert any("weakly typed" in n and "INT8 builder flag" in n for n in weak)
    # the CPU graph given on its own is checked, and fails: QOperator / com.microsoft ops, uint8 zero points
    problems = check_path(LENET / "model.int8-cpu.onnx", parse_targets("10.3"))[0].verdicts["10.3"].problems
    assert any(p.startswith("QLinearConv") and '"Supported: N"' in p for p in problems)
    assert any("com.microsoft" in p for p in problems)
    assert any("is not 0 (asymmetric)" in p and '"`y_zero_point` must be 0"' in p for p in problems)


def test_a_nonzero_zero_point_is_flagged_quoting_the_table():
    verdict = check_model(_qdq(zero_point=3), "10.3")
    assert not verdict.ready
    assert any('"`y_zero_point` must be 0" (TensorRT 10.1 operator table)' in p for p in verdict.problems)
    assert any('"`x_zero_point` must be zero"' in p for p in verdict.problems)
    assert check_model(_qdq(zero_point=0), "10.3").ready and check_model(_qdq(zero_point=0), "11.5").ready


def test_scales_must_be_positive_and_activations_per_tensor():
    bad = check_model(_qdq(scale=-0.1), "11.5").problems
    assert any("coefficient <= 0" in p and "strictly positive" in p for p in bad)
    per_channel = check_model(_qdq(axis=1, scale_shape=(3,)), "11.5").problems
    assert any("quantized per channel" in p and "per-tensor quantization for activation" in p for p in per_channel)
    wrong_axis = check_model(_qdq(axis=1, scale_shape=(5,)), "11.5").problems
    assert any("per-channel scale of 5 along axis 1" in p for p in wrong_axis)


def test_an_opset_above_the_range_fails_on_10_3_and_passes_on_11x():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], opset=21)
    old = check_model(model, "10.3")
    assert not old.ready
    assert '"TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"' in old.problems[0]
    assert check_model(model, "11.5").ready
    assert not check_model(_model([helper.make_node("Relu", ["x"], ["y"])], opset=25), "11.5").ready


def test_unsupported_and_unknown_ops_are_named():
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])]
    unique = _model([helper.make_node("Unique", ["x"], ["y"])], inputs=x)
    assert any(p.startswith('Unique: "Supported: N"') for p in check_model(unique, "11.5").problems)
    made_up = _model([helper.make_node("FrobnicateLinear", ["x"], ["y"])], inputs=x)
    assert any("unknown op" in p for p in check_model(made_up, "10.3").problems)


def test_restrictions_read_from_the_graph():
    # a reduce whose axes are computed, not an initializer
    reduce = _model([helper.make_node("Shape", ["x"], ["shape"]),
                     helper.make_node("Slice", ["shape", "one", "two"], ["axes"]),
                     helper.make_node("ReduceMean", ["x", "axes"], ["y"])],
                    [numpy_helper.from_array(np.array([1], np.int64), "one"),
                     numpy_helper.from_array(np.array([2], np.int64), "two")])
    assert any("ReduceMean" in p and '"`axes` must be an initializer"' in p
               for p in check_model(reduce, "10.3").problems)
    const_axes = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"])],
                        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    assert check_model(const_axes, "10.3").ready
    # Resize: cubic is not a published mode
    resize = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")],
                    [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    assert any("mode 'cubic'" in p and "Supported resize modes" in p for p in check_model(resize, "11.5").problems)
    # pooling: 1-D pooling and dilations
    x1 = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8])]
    pool = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2])], inputs=x1)
    assert any("a 1D pooling" in p and "2D or 3D pooling only" in p for p in check_model(pool, "10.3").problems)
    dilated = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])])
    assert any("dilations [2, 2]" in p for p in check_model(dilated, "10.3").problems)


def test_types_come_from_shape_inference():
    x = [helper.make_tensor_value_info("x", TensorProto.INT32, [4])]
    erf = _model([helper.make_node("Erf", ["x"], ["y"])], inputs=x,
                 outputs=[helper.make_tensor_value_info("y", TensorProto.INT32, None)])
    assert any("INT32 'x' is not among its supported types" in p for p in check_model(erf, "11.5").problems)
    dbl = [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [4])]
    notes = check_model(_model([helper.make_node("Relu", ["x"], ["y"])], inputs=dbl), "11.5")
    assert any("cast DOUBLE down to FLOAT" in n for n in notes.notes + notes.problems)


def test_typing_notes_say_what_weak_and_strong_typing_mean_for_the_graph():
    half = [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])]
    model = _model([helper.make_node("Relu", ["x"], ["y"])], inputs=half,
                   outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    weak, strong = check_model(model, "10.3"), check_model(model, "11.5")
    assert weak.ready and strong.ready
    assert any("weakly typed" in n and "FP16 builder flag" in n and "I/O stays FP16" in n for n in weak.notes)
    assert any("strongly typed (the only mode" in n and "FP16 inside" in n for n in strong.notes)
    assert any("weak typing was removed in 11.0" in n for n in strong.notes)
    assert any("table is used" in n for n in weak.notes)  # a borrowed table is said in every verdict


def test_cli_json_and_exit_codes(cli, tmp_path):
    ok = cli("check", LENET, "--json")
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["ready"] is True and set(data["targets"]) == {"10.3", "11.5"}
    assert data["targets"]["10.3"]["gap"] and data["targets"]["10.3"]["source"]["repo"] == "onnx/onnx-tensorrt"
    entry = next(a for a in data["artifacts"] if a["path"] == "model.int8.onnx")
    assert entry["tensorrt_ready"]["10.3"]["ready"] is True and entry["tensorrt_ready"]["10.3"]["problems"] == []
    bad = tmp_path / "asym.onnx"
    onnx.save(_qdq(zero_point=5), str(bad))
    failed = cli("check", bad, "--trt", "10.3,11.5", "--json")
    assert failed.exit_code == 4
    verdicts = json.loads(failed.stdout)["artifacts"][0]["tensorrt_ready"]
    assert verdicts["10.3"]["ready"] is False and verdicts["11.5"]["ready"] is False
    assert cli("check", bad, "--trt", "8.6").exit_code == 1
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    assert cli("check", junk).exit_code == 1


def _with_graph(folder: Path, name: str, model) -> None:
    """Replace an artifact of a copied export folder, keeping its manifest entry's checksum true."""
    onnx.save(model, str(folder / name))
    manifest = Manifest.load(folder)
    manifest.update_artifact(name, sha256=sha256_file(folder / name), bytes=(folder / name).stat().st_size)
    manifest.save(folder)


def test_build_refuses_a_graph_its_tensorrt_table_rejects_before_the_builder(tmp_path, monkeypatch):
    from test_trt_build import fake_tensorrt, probe_with

    from deploykit.tensorrt.build import build_engine

    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "exp"
    shutil.copytree(LENET, folder)
    model = onnx.load(str(folder / "model.onnx"))
    model.opset_import[0].version = 21  # above TensorRT 10.3's range (9 to 20), inside 10.15's
    _with_graph(folder, "model.onnx", model)
    trt = fake_tensorrt("10.3.0")
    with pytest.raises(EngineBuildError, match=r"TensorRT 10\.3\.0 will not build model\.onnx.*opset 21"):
        build_engine(folder, "fp32", probe=probe_with(trt))
    assert trt.built == [] and not (folder / "model.fp32.engine").exists()
    assert build_engine(folder, "fp32", probe=probe_with(fake_tensorrt("10.15.1"))).path.exists()
    assert build_engine(folder, "fp32", probe=probe_with(fake_tensorrt("10.3.0")), trt_check=False).path.exists()
