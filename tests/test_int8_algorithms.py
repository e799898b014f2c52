"""INT8 algorithms of issue 11 on tiny graphs: bias correction, MSE range search, graph-bounded ranges, and that
neither changes where the Q/DQ pairs go. Seconds, no network."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _model(path, *, relu6: bool = True, seed: int = 0):
    """x -> Conv 3x3 (8 ch) -> Clip(0,6) -> Pad -> depthwise 3x3 -> Clip -> Conv 1x1 (4 ch) -> GAP -> Flatten ->
    Gemm (5): a MobileNet block in miniature. Weights on a coarse grid plus a little noise, so int8 rounding
    leaves a systematic per-channel shift."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.3):
        base = rng.standard_normal(shape) * scale
        return (base + np.sign(base) * 0.004).astype(np.float32)

    inits = [numpy_helper.from_array(w(8, 3, 3, 3), "w1"), numpy_helper.from_array(w(8, scale=0.1), "b1"),
             numpy_helper.from_array(w(8, 1, 3, 3, scale=1.0), "w2"), numpy_helper.from_array(w(8, scale=0.1), "b2"),
             numpy_helper.from_array(w(4, 8, 1, 1), "w3"), numpy_helper.from_array(w(4, scale=0.1), "b3"),
             numpy_helper.from_array(w(5, 4), "w4"), numpy_helper.from_array(w(5, scale=0.1), "b4"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")]
    act = "Clip" if relu6 else "Relu"
    args = (lambda x, y: [x, "lo", "hi"]) if relu6 else (lambda x, y: [x])
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node(act, args("c1", "a1"), ["a1"], name="act1"),
             helper.make_node("Pad", ["a1", "pads"], ["p1"], name="pad1"),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="dw", group=8),
             helper.make_node(act, args("c2", "a2"), ["a2"], name="act2"),
             helper.make_node("Conv", ["a2", "w3", "b3"], ["c3"], name="project"),
             helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "mini", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _run(path, x, outputs=None):
    import onnxruntime as ort

    model = onnx.load(str(path))
    for name in outputs or []:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")  # the graph's own semantics, as deploykit runs it
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run(outputs or None, {"x": x})


def _images(n=64, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, 8, 8)) * 1.5 + 0.3).astype(np.float32)


def _ranges(src, x, method):
    from deploykit.precision.calibrate import collect_stats
    from deploykit.precision.int8 import cpu_tensors, plan_trt
    from deploykit.precision.ranges import bounded_tensors

    model = onnx.load(str(src))
    plan = plan_trt(model)
    tensors = list(dict.fromkeys(list(plan.activation_tensors) + cpu_tensors(model)))
    stats = collect_stats(src, tensors, [x], histogram=True)
    bounded = bounded_tensors(model)
    return plan, {n: s.to_json(method, n in bounded) for n, s in stats.items()}


# -- bias correction -----------------------------------------------------------------------------------------
def test_bias_correction_zeroes_the_mean_output_error_on_the_calibration_data(tmp_path):
    from deploykit.precision.bias_correction import measure_shifts
    from deploykit.precision.calibrate import CalibMethod
    from deploykit.precision.int8 import quantize_trt

    src = _model(tmp_path / "m.onnx")
    x = _images()
    plan, ranges = _ranges(src, x, CalibMethod.mse)
    amax = {n: r["amax"] for n, r in ranges.items()}
    shifts = measure_shifts(src, amax, [x], plan=plan)
    assert set(shifts) == {layer.node for layer in plan.layers}  # the depthwise conv included
    assert all(s.shape == (c,) for s, c in zip((shifts[n] for n in ("conv1", "dw", "project", "fc")), (8, 8, 4, 5)))
    quantize_trt(src, tmp_path / "plain.onnx", amax, plan=plan)
    quantize_trt(src, tmp_path / "bc.onnx", amax, plan=plan, bias=shifts)
    (ref,) = _run(src, x)
    (plain,) = _run(tmp_path / "plain.onnx", x)
    (corrected,) = _run(tmp_path / "bc.onnx", x)
    err_plain = np.abs((plain - ref).mean(0))
    err_bc = np.abs((corrected - ref).mean(0))
    assert err_plain.max() > 1e-3  # there was a shift to take out
    assert err_bc.max() < 0.2 * err_plain.max()
    # the first layer's input is the graph input, exactly as in FP32: its mean error is zero up to float noise
    ref_c1, = _run(src, x, ["c1"])
    bc_c1, = _run(tmp_path / "bc.onnx", x, ["c1"])
    assert np.abs((bc_c1 - ref_c1).mean(axis=(0, 2, 3))).max() < 1e-5


def test_drift_correction_brings_the_last_layer_closer_to_fp32_than_local_correction(tmp_path):
    """Local correction leaves the drift upstream noise puts on the logits' mean; drift mode corrects the last
    layers to the FP32 model's own per-channel means, one after the other."""
    from deploykit.precision.bias_correction import measure_shifts
    from deploykit.precision.calibrate import CalibMethod
    from deploykit.precision.int8 import quantize_trt

    src = _model(tmp_path / "m.onnx")
    x = _images()
    plan, ranges = _ranges(src, x, CalibMethod.mse)
    amax = {n: r["amax"] for n, r in ranges.items()}
    local = measure_shifts(src, amax, [x], plan=plan)
    drift = measure_shifts(src, amax, [x], plan=plan, mode="drift", rounds=2)
    assert set(drift) == set(local)
    for n in ("conv1", "dw"):  # the layers before the last two keep their local shifts
        np.testing.assert_array_equal(drift[n], local[n])
    (ref,) = _run(src, x)
    errs = []
    for name, shifts in (("local", local), ("drift", drift)):
        quantize_trt(src, tmp_path / f"{name}.onnx", amax, plan=plan, bias=shifts)
        (out,) = _run(tmp_path / f"{name}.onnx", x)
        errs.append(np.abs((out - ref).mean(0)).max())
    assert errs[1] < 0.1 * errs[0]
    assert errs[1] < 1e-4  # the last layer's per-channel mean matches FP32's up to float noise
    with pytest.raises(ValueError):
        measure_shifts(src, amax, [x], plan=plan, mode="jacobi")


@pytest.mark.parametrize("relu6", [True, False])
def test_cpu_graph_shifts_are_measured_on_the_cpu_graph(tmp_path, relu6):
    """``cpu_ranges``: the shifts are measured on ONNX Runtime's CPU graph, whose quantizer drops the Clip/Relu
    after a conv (the next Q's range clips the same way). Each layer's FP32 twin still gets the activated input
    (``_reapply``): fed the raw conv output instead, the ``dw`` and ``project`` shifts came out 10-60x too large
    (Lite0's CPU graph then agreed with FP32 on 1% of the crops). Applied, the shifts take the CPU graph's mean
    output error out of the CPU graph; the TensorRT graph's shifts, measured with other activation ranges, do not
    (toy model: 0.0010 left against 0.0002 after the drift rounds)."""
    from deploykit.precision.bias_correction import _quantized_cpu, measure_shifts
    from deploykit.precision.calibrate import CalibMethod
    from deploykit.precision.int8 import quantize_cpu

    src = _model(tmp_path / "m.onnx", relu6=relu6)
    x = _images()
    plan, ranges = _ranges(src, x, CalibMethod.mse)
    amax = {n: r["amax"] for n, r in ranges.items()}
    act = "Clip" if relu6 else "Relu"
    folded = _quantized_cpu(src, ranges, plan, None)
    assert Counter(n.op_type for n in folded.graph.node)[act] < 2  # ORT's quantizer did drop an activation
    trt = measure_shifts(src, amax, [x], plan=plan)
    cpu = measure_shifts(src, amax, [x], plan=plan, cpu_ranges=ranges)
    assert set(cpu) == set(trt) == {layer.node for layer in plan.layers}
    for name in cpu:  # the same kind of shift: weight rounding times the input's mean, not an activation missed
        assert np.abs(cpu[name]).max() < 5 * np.abs(trt[name]).max() + 1e-3, name
    drift = measure_shifts(src, amax, [x], plan=plan, cpu_ranges=ranges, mode="drift", rounds=2)
    trt_drift = measure_shifts(src, amax, [x], plan=plan, mode="drift", rounds=2)
    (ref,) = _run(src, x)
    errs = {}
    for tag, bias in (("plain", None), ("trt", trt), ("cpu", cpu), ("drift", drift), ("trt_drift", trt_drift)):
        quantize_cpu(src, tmp_path / f"{tag}.onnx", ranges, plan=plan, bias=bias)
        (out,) = _run(tmp_path / f"{tag}.onnx", x)
        errs[tag] = np.abs((out - ref).mean(0)).max()
    assert errs["plain"] > 1e-3 and errs["cpu"] < 0.5 * errs["plain"] and errs["drift"] < 0.1 * errs["plain"]
    # the TensorRT graph's shifts (what the CPU graph carried before deploykit-calib/8) leave 4x more in
    assert errs["drift"] < 0.5 * errs["trt_drift"]


def test_bias_correction_skips_depthwise_when_asked_and_leaves_excluded_layers_alone(tmp_path):
    from deploykit.precision.bias_correction import measure_shifts
    from deploykit.precision.calibrate import CalibMethod
    from deploykit.precision.int8 import quantize_trt

    src = _model(tmp_path / "m.onnx")
    x = _images(32)
    plan, ranges = _ranges(src, x, CalibMethod.minmax)
    amax = {n: r["amax"] for n, r in ranges.items()}
    assert "dw" not in measure_shifts(src, amax, [x], plan=plan, skip_depthwise=True)
    shifts = measure_shifts(src, amax, [x], plan=plan)
    quantize_trt(src, tmp_path / "ex.onnx", amax, plan=plan, bias=shifts, exclude=["dw"])
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "ex.onnx")).graph.initializer}
    orig = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}
    np.testing.assert_array_equal(inits["b2"], orig["b2"])  # the FP32 layer keeps its own bias
    np.testing.assert_allclose(inits["b1"], orig["b1"] + shifts["conv1"], rtol=0, atol=1e-6)


def test_bias_correction_keeps_the_qdq_placement(tmp_path):
    """Same nodes, same Q/DQ wiring, same scales and int8 weights: only bias values move (TensorRT graph), and
    the CPU graph has the same operators."""
    from deploykit.precision.bias_correction import measure_shifts
    from deploykit.precision.calibrate import CalibMethod
    from deploykit.precision.int8 import quantize_cpu, quantize_trt

    src = _model(tmp_path / "m.onnx")
    x = _images(32)
    plan, ranges = _ranges(src, x, CalibMethod.mse)
    amax = {n: r["amax"] for n, r in ranges.items()}
    shifts = measure_shifts(src, amax, [x], plan=plan)
    graphs = {}
    for tag, bias in (("plain", None), ("bc", shifts)):
        quantize_trt(src, tmp_path / f"{tag}.onnx", amax, plan=plan, bias=bias)
        quantize_cpu(src, tmp_path / f"{tag}-cpu.onnx", ranges, plan=plan, bias=bias)
        graphs[tag] = onnx.load(str(tmp_path / f"{tag}.onnx"))
        graphs[tag + "-cpu"] = onnx.load(str(tmp_path / f"{tag}-cpu.onnx"))
    wiring = {tag: [(n.op_type, tuple(n.input), tuple(n.output)) for n in g.graph.node] for tag, g in graphs.items()}
    assert wiring["plain"] == wiring["bc"]
    counts = Counter(n.op_type for n in graphs["bc"].graph.node)
    assert counts["QuantizeLinear"] == 4 and counts["DequantizeLinear"] == 8
    assert Counter(n.op_type for n in graphs["plain-cpu"].graph.node) == \
        Counter(n.op_type for n in graphs["bc-cpu"].graph.node)
    a = {i.name: numpy_helper.to_array(i) for i in graphs["plain"].graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in graphs["bc"].graph.initializer}
    assert a.keys() == b.keys()
    moved = {k for k in a if not np.array_equal(a[k], b[k])}
    assert moved == {"b1", "b2", "b3", "b4"}


# -- ranges --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gauss", "laplace-outliers", "relu", "uniform"])
def test_mse_search_never_picks_a_range_worse_than_the_max(kind):
    from deploykit.precision.calibrate import CalibMethod, TensorStats
    from deploykit.precision.ranges import quantization_mse

    rng = np.random.default_rng(3)
    x = {"gauss": rng.standard_normal(200_000), "laplace-outliers": np.concatenate(
        [rng.laplace(size=200_000), [40.0, -35.0]]), "relu": np.maximum(rng.standard_normal(200_000), 0),
         "uniform": rng.uniform(-1, 1, 200_000)}[kind].astype(np.float32)
    stats = TensorStats()
    stats.update(x, histogram=True)
    t = stats.threshold(CalibMethod.mse)
    assert 0 < t <= stats.amax
    est = quantization_mse(stats.hist, stats.edge, np.array([t, stats.amax]))
    assert est[0] <= est[1]

    def real_mse(amax):  # the error of really quantizing x symmetric int8 with this range
        step = amax / 127
        return float(((np.clip(np.round(x / step), -127, 127) * step - x) ** 2).mean())

    assert real_mse(t) <= real_mse(stats.amax) * 1.02
    if kind == "laplace-outliers":
        assert t < 0.75 * stats.amax and real_mse(t) < real_mse(stats.amax) / 1.5
    if kind == "uniform":
        assert t > 0.95 * stats.amax  # nothing to clip


def test_bounded_tensors_follow_relu6_through_padding_and_keep_their_range(tmp_path):
    from deploykit.precision.calibrate import CalibMethod, TensorStats
    from deploykit.precision.ranges import bounded_tensors

    src = _model(tmp_path / "m.onnx")
    bounds = bounded_tensors(onnx.load(str(src)))
    assert bounds == {"a1": (0.0, 6.0), "p1": (0.0, 6.0), "a2": (0.0, 6.0)}
    assert bounded_tensors(onnx.load(str(_model(tmp_path / "r.onnx", relu6=False)))) == {}
    stats = TensorStats()
    x = np.concatenate([np.abs(np.random.default_rng(0).standard_normal(100_000)) * 0.3, np.full(30, 6.0)])
    x = x.astype(np.float32)
    stats.update(x, histogram=True)
    assert stats.threshold(CalibMethod.entropy) < 2.0  # the KL search would clip ReLU6's saturated values
    assert stats.threshold(CalibMethod.entropy, bounded=True) == pytest.approx(6.0)


def test_calibrate_stores_bias_shifts_in_the_cache(tmp_path):
    from PIL import Image

    from deploykit.data import scan_images
    from deploykit.precision.calibrate import CalibMethod, calibrate
    from deploykit.preprocess import Preprocess

    src = _model(tmp_path / "m.onnx")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    images = scan_images(folder)
    pre = Preprocess(channels=3, height=8, width=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    from deploykit.precision.int8 import plan_trt

    tensors = plan_trt(onnx.load(str(src))).activation_tensors
    first = calibrate(src, tensors, images, pre, CalibMethod.mse, cache_dir=tmp_path)
    assert first.bias is not None and set(first.bias) == {"conv1", "dw", "project", "fc"}
    again = calibrate(src, tensors, images, pre, CalibMethod.mse, cache_dir=tmp_path)
    assert again.cached and again.bias.keys() == first.bias.keys()
    for k in first.bias:
        np.testing.assert_allclose(again.bias[k], first.bias[k], rtol=1e-6)
    # the drift part (last two layers) is kept apart: a graph with any layer out of INT8 carries the local
    # shifts only, the all-INT8 graph local + drift
    assert set(first.drift) == {"project", "fc"} and again.drift.keys() == first.drift.keys()
    assert first.bias_for(()) is first.bias
    local = first.bias_for(("conv1",))
    np.testing.assert_array_equal(local["dw"], first.bias["dw"])
    for k in ("project", "fc"):
        np.testing.assert_allclose(again.drift[k], first.drift[k], rtol=1e-6)
        np.testing.assert_allclose(local[k] + first.drift[k], first.bias[k], rtol=1e-5, atol=1e-7)
    plain = calibrate(src, tensors, images, pre, CalibMethod.mse, cache_dir=tmp_path, bias_correction=False)
    assert not plain.cached and plain.bias is None
    assert CalibMethod.default() is CalibMethod.mse
