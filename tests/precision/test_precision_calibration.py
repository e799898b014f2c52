"""Calibration: the range cache, the statistics and their histograms, and calibration errors as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from PIL import Image

from _precision_common import REPO_CALIB


# -- calibration ---------------------------------------------------------------------------------------------
def test_calibration_is_cached_by_model_data_and_method(resnet_export, tmp_path):
    from deploykit.precision.calibrate import CalibMethod, calibrate, calibration_images
    from deploykit.precision.int8 import plan_trt

    folder = resnet_export.folder
    fp32 = folder / "model.onnx"
    pre = resnet_export.loaded.preprocess
    tensors = plan_trt(onnx.load(str(fp32))).activation_tensors
    images = calibration_images(REPO_CALIB, size=512)
    work = tmp_path / "c"
    work.mkdir()
    first = calibrate(fp32, tensors, images, pre, CalibMethod.minmax, cache_dir=work)
    again = calibrate(fp32, tensors, images, pre, CalibMethod.minmax, cache_dir=work)
    assert not first.cached and again.cached and again.tensors == first.tensors
    entropy = calibrate(fp32, tensors, images, pre, CalibMethod.entropy, cache_dir=work)
    percentile = calibrate(fp32, tensors, images, pre, CalibMethod.percentile, cache_dir=work)
    assert not entropy.cached and len(list(work.glob("calib-*.json"))) == 3
    fewer = calibrate(fp32, tensors, images.sample(35), pre, CalibMethod.minmax, cache_dir=work)
    assert not fewer.cached  # other images, other key
    for name in tensors:  # clipping methods never exceed the observed max
        assert 0 < entropy.amax(name) <= first.amax(name) + 1e-6
        assert 0 < percentile.amax(name) <= first.amax(name) + 1e-6


def test_entropy_threshold_clips_outliers():
    from deploykit.precision.calibrate import CalibMethod, TensorStats

    rng = np.random.default_rng(0)
    stats = TensorStats()
    x = np.abs(rng.standard_normal(500_000)).astype(np.float32)
    x[:5] = 60.0  # a few outliers stretch the max
    stats.update(x, histogram=True)
    assert stats.threshold(CalibMethod.minmax) == pytest.approx(60.0)
    assert 2.0 < stats.threshold(CalibMethod.entropy) < 10.0
    assert 3.0 < stats.threshold(CalibMethod.percentile) < 6.0


def test_tensor_stats_of_pieces_equal_those_of_their_concatenation():
    """A chunk's outputs are folded in piece by piece (no copy into one array): the min/max and histogram must be
    the ones of the concatenated chunk, for signed tensors, ReLU outputs (no |x| pass) and non-finite values."""
    from deploykit.precision.calibrate import TensorStats

    rng = np.random.default_rng(1)
    signed = [rng.standard_normal((1, 8, 5, 5)).astype(np.float32) * s for s in (1.0, 3.0, 0.5)]
    relu = [np.maximum(p, 0) for p in signed]
    broken = [signed[0].copy(), signed[1]]
    broken[0][0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    nothing_finite = [np.full((1, 2, 3, 3), np.nan, np.float32), np.full((1, 2, 3, 3), np.inf, np.float32)]
    for pieces in (signed, relu, broken, signed[:1], nothing_finite):
        whole, split, numpy_path = TensorStats(), TensorStats(), TensorStats()
        first = pieces[0] * 0.1  # a first, narrower update: the second one must grow the range exactly the same
        whole.update(first, histogram=True)
        split.update([first], histogram=True)
        numpy_path._update_numpy(first, histogram=True)  # the torch-less path: the semantics to keep
        concatenated = np.concatenate([p.ravel() for p in pieces])
        whole.update(concatenated, histogram=True)
        split.update(list(pieces), histogram=True)
        numpy_path._update_numpy(concatenated, histogram=True)
        for stats in (whole, numpy_path):
            assert (split.lo, split.hi, split.edge) == (stats.lo, stats.hi, stats.edge)
            np.testing.assert_array_equal(split.hist, stats.hist)
        assert split.hist.sum() == first.size + sum(p.size for p in pieces)


def test_histogram_of_a_strided_sample_keeps_the_ranges(monkeypatch):
    """Large tensors are histogrammed on an evenly strided sample (min/max still read every value): over a
    calibration set's worth of images the ranges each method derives must stay those of the full histogram, and
    the stride must not stripe one column."""
    import deploykit.precision.stats as calibrate_mod
    from deploykit.precision.calibrate import CalibMethod, TensorStats
    from deploykit.precision.stats import _sample

    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    pieces = []
    for _ in range(32):  # 32 images of a ReLU-like feature map with channel-dependent spread
        x = np.maximum(rng.standard_normal((1, 64, 56, 56)) * np.linspace(0.5, 2, 64)[None, :, None, None], 0)
        x[..., 0] = 9.0  # column 0 is special (a padding border): a stride dividing the width would see it always
        x.ravel()[rng.integers(0, x.size, 20)] = rng.uniform(12, 40, 20)  # rare outliers, 1 in 10,000
        pieces.append(x.astype(np.float32))
    picked = _sample(torch.from_numpy(pieces[0]).reshape(-1), pieces[0].size // 8)
    assert pieces[0].size // 12 < picked.numel() <= pieces[0].size // 8  # stride 8 -> the prime 11
    share = float((picked == 9.0).float().mean())
    assert abs(share - 1 / 56) < 0.2 / 56  # column 0's true share, not all or nothing
    full, sampled = TensorStats(), TensorStats()
    monkeypatch.setattr(calibrate_mod, "HIST_SAMPLE", pieces[0].size)
    full.update(pieces, histogram=True)
    monkeypatch.setattr(calibrate_mod, "HIST_SAMPLE", pieces[0].size // 8)
    sampled.update(pieces, histogram=True)
    assert sampled.amax == full.amax == max(float(p.max()) for p in pieces)  # min/max read every value
    assert sampled.hist.sum() < full.hist.sum() // 8
    for method in (CalibMethod.mse, CalibMethod.entropy, CalibMethod.percentile):
        assert sampled.threshold(method) == pytest.approx(full.threshold(method), rel=0.05), method


@pytest.fixture
def run_sizes(monkeypatch) -> list[int]:
    """The batch size of every run of the statistics pass's ONNX Runtime session, in order."""
    import deploykit.precision.stats as stats_mod

    sizes: list[int] = []
    real = stats_mod._session_with_outputs

    class Recording:
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run(self, names, feed):
            sizes.append(next(iter(feed.values())).shape[0])
            return self.session.run(names, feed)

    monkeypatch.setattr(stats_mod, "_session_with_outputs", lambda *a: Recording(real(*a)))
    return sizes


def test_collect_stats_streams_a_dynamic_batch_in_chunks(tmp_path, run_sizes):
    """Every tensor of a run is held at once: a dynamic-batch graph must not see the whole set in one run."""
    from onnx import helper

    import deploykit.precision.stats as calibrate_mod

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    src = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), src)
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    stats = calibrate_mod.collect_stats(src, ["r", "y"], [x], histogram=False)
    assert run_sizes == [16, 16, 8]
    assert stats["r"].hi == pytest.approx(float(np.maximum(x, 0).max()))
    assert stats["y"].amax == pytest.approx(float(np.maximum(x, 0).max()))


def _fixed_batch_graph(path: Path, baked: bool) -> Path:
    """x [1, 300] -> Relu -> Reshape [1, 300] (torch's view: the batch in the target) -> Neg; ``baked``: a
    Reshape to [300, 1] and back first, which no batch but 1 can run."""
    from onnx import helper

    inits = [numpy_helper.from_array(np.array([1, 300], np.int64), "flat"),
             numpy_helper.from_array(np.array([300, 1], np.int64), "column")]
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    src = "r"
    if baked:
        nodes.append(helper.make_node("Reshape", ["r", "column"], ["c"]))
        src = "c"
    nodes += [helper.make_node("Reshape", [src, "flat"], ["v"]), helper.make_node("Neg", ["v"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 300])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 300])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


@pytest.mark.parametrize("baked", [False, True])
def test_collect_stats_batches_a_fixed_batch_graph_and_keeps_its_statistics(baked, tmp_path, monkeypatch, run_sizes):
    """A batch-1 graph runs 16 images at a time once its batch is freed (checked against single-image runs; a
    graph with the batch baked in runs one at a time), and the statistics are those of per-image updates."""
    import deploykit.precision.stats as calibrate_mod
    from deploykit.precision.calibrate import TensorStats, collect_stats

    src = _fixed_batch_graph(tmp_path / "g.onnx", baked)
    monkeypatch.setattr(calibrate_mod, "HIST_SAMPLE", 64)  # 300 values an image: a strided sample (stride 5)
    x = (np.random.default_rng(0).standard_normal((40, 300)) * np.linspace(0.1, 3, 300)).astype(np.float32)
    stats = collect_stats(src, ["r", "y"], [x[:32], x[32:]], histogram=True)
    if baked:
        assert run_sizes[:1] == [16] and run_sizes[1:] == [1] * 40  # the batched try failed: one image at a time
    else:
        assert run_sizes == [16, 1, 1, 16, 8]  # the first chunk, its first and last image alone, then batched
    for name, values in (("r", np.maximum(x, 0)), ("y", -np.maximum(x, 0))):
        expected = TensorStats()
        expected.update([v[None] for v in values[:16]], histogram=True)
        expected.update([v[None] for v in values[16:32]], histogram=True)
        expected.update([v[None] for v in values[32:]], histogram=True)
        got = stats[name]
        assert (got.lo, got.hi, got.edge) == (expected.lo, expected.hi, expected.edge)
        np.testing.assert_array_equal(got.hist, expected.hist)
        assert got.hist.sum() == 40 * 60  # 60 of each image's 300 values


# -- errors --------------------------------------------------------------------------------------------------
def _photo_folder(path: Path, n: int, mode: str = "RGB") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    srcs = sorted(REPO_CALIB.glob("*.jpg"))
    for i in range(n):
        Image.open(srcs[i % len(srcs)]).convert(mode).save(path / f"p{i:03d}.png")
    return path


@pytest.mark.parametrize("case", ["no-default", "missing", "empty", "too-few", "all-corrupt"])
def test_calibration_errors_are_one_line(case, resnet18_sd, cli, tmp_path):
    args = ["export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
            "--int8", "--no-verify"]
    expect = {"no-default": "INT8 needs calibration images", "missing": "folder not found",
              "empty": "no readable images", "too-few": "needs at least 32", "all-corrupt": "no readable images",
              }[case]
    if case == "missing":
        args += ["--calib", tmp_path / "nope"]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args += ["--calib", tmp_path / "empty"]
    elif case == "too-few":
        args += ["--calib", _photo_folder(tmp_path / "few", 10)]
    elif case == "all-corrupt":
        bad = tmp_path / "bad"
        bad.mkdir()
        for i in range(40):
            (bad / f"x{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        args += ["--calib", bad]
    res = cli(*args)
    assert res.exit_code == 1, res.output
    assert expect in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "model.int8.onnx").exists()


def test_grayscale_calibration_for_a_colour_model_is_a_warning(resnet18_sd, cli, tmp_path):
    """A state_dict says nothing about grayscale training: calibrating a colour model on a grayscale folder is a
    warning naming --calib-grayscale (issue 13), and the export goes on."""
    res = cli("export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
              "--int8", "--no-verify", "--calib", _photo_folder(tmp_path / "gray", 40, mode="L"))
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "grayscale" in res.output and "--calib-grayscale" in res.output
    assert (tmp_path / "o" / "model.int8.onnx").is_file()


def test_corrupt_images_are_skipped_and_min_calib_lowers_the_bar(resnet18_sd, cli, tmp_path):
    calib = _photo_folder(tmp_path / "c", 10)
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = ["export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
            "--int8", "--calib", calib, "--no-verify"]
    res = cli(*args)
    assert res.exit_code == 1 and "has 10 usable image(s)" in res.output
    res = cli(*args, "--min-calib", "8", "--calib-method", "percentile")
    assert res.exit_code == 0, res.output
    assert "broken.jpg" in res.output  # the skip is reported
    assert (tmp_path / "o" / "model.int8.onnx").is_file()


def test_default_calib_folder_is_used(resnet18_sd, cli, tmp_path):
    shutil.copytree(REPO_CALIB, tmp_path / "calib")  # tests run in tmp_path (conftest)
    res = cli("export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
              "--int8", "--calib-size", "33", "--calib-method", "minmax", "--no-verify")
    assert res.exit_code == 0, res.output
    details = json.loads((tmp_path / "o" / "deploykit.json").read_text())["artifacts"][-1]["details"]
    assert details["calibration"]["images"] == 33


def test_precision_flags_need_int8(resnet18_sd, cli, tmp_path):
    base = ["export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o"]
    res = cli(*base, "--int8-for", "cpu")  # implies --int8 (issue 13), which then needs calibration images
    assert res.exit_code == 1 and "INT8 needs calibration images" in res.output
    res = cli(*base, "--calib", REPO_CALIB)
    assert res.exit_code == 1 and "--calib" in res.output
    res = cli(*base, "--int8", "--calib-method", "kl")
    assert res.exit_code == 2  # typer rejects a choice outside the enum
    for flags in (["--calib-size", "512"], ["--calib-method", "entropy"], ["--min-calib", "32"],
                  ["--int8-agreement", "0.9"], ["--int8-accuracy-drop", "2"], ["--int8-remainder", "fp32"]):
        res = cli(*base, *flags)
        assert res.exit_code == 1 and f"{flags[0]} applies only with --int8" in res.output, (flags, res.output)


def test_min_calib_is_checked_against_the_sample(resnet18_sd, cli, tmp_path):
    res = cli("export", resnet18_sd, "--arch", "resnet18", "--input-shape", "3,32,32", "--out", tmp_path / "o",
              "--int8", "--calib", REPO_CALIB, "--calib-size", "16", "--no-verify")
    assert res.exit_code == 1 and "raise --calib-size or lower --min-calib" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "o" / "model.int8.onnx").exists()




# -- bias correction's shortcuts -------------------------------------------------------------------------------
def _residual_net(path):
    """x -> Conv 1x1 (no bias) -> Conv 3x3 (no bias) -> Relu -> Conv 3x3 -> Add -> Relu -> depthwise 3x3 stride 2
    (pads 0,0,1,1) -> GAP -> Flatten -> Gemm: a residual block whose first convs have no bias (ORT's quantizer then
    gets a zero one to write shifts into), then a strided, grouped, unevenly padded conv."""
    from onnx import helper

    rng = np.random.default_rng(3)

    def w(*shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale + 0.01).astype(np.float32), f"w{len(inits)}")

    inits = []
    inits.append(w(6, 3, 1, 1))
    inits.append(w(6, 6, 3, 3))
    inits.append(w(6, 6, 3, 3))
    inits.append(w(6, scale=0.1))
    inits.append(w(6, 1, 3, 3, scale=1.0))
    inits.append(w(4, 6))
    inits.append(w(4, scale=0.1))
    names = [i.name for i in inits]
    nodes = [helper.make_node("Conv", ["x", names[0]], ["s"], name="stem"),
             helper.make_node("Conv", ["s", names[1]], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", names[2], names[3]], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "s"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", names[4]], ["d"], name="dw", group=6, strides=[2, 2],
                              pads=[0, 0, 1, 1]),
             helper.make_node("GlobalAveragePool", ["d"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", names[5], names[6]], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_bias_correction_shortcuts_give_the_full_passes_shifts(tmp_path, monkeypatch):
    """The drift targets read from the statistics pass, the FP32 twin's means computed from the layer input's
    mean, the later drift rounds run on the graph's tail alone, and the CPU graph's shifts written into its int32
    biases give what the full passes give: the same targets, the same shifts, the same bias integers as ORT's
    quantizer writes when rebuilt with the shifts."""
    from deploykit.precision import bias_correction as bc
    from deploykit.precision.calibrate import CalibMethod, collect_stats
    from deploykit.precision.int8 import cpu_tensors, plan_trt
    from deploykit.precision.stats import ChannelMeans

    src = _residual_net(tmp_path / "m.onnx")
    x = (np.random.default_rng(1).standard_normal((24, 3, 8, 8)) + 0.2).astype(np.float32)
    model = onnx.load(str(src))
    plan = plan_trt(model)
    tail = bc.drift_tail(model, plan)
    assert [node for node, _, _ in tail] == ["dw", "fc"]
    means = ChannelMeans({t: axes for _, t, axes in tail}, frozenset(range(0, 24, 3)))
    tensors = list(dict.fromkeys(list(plan.activation_tensors) + cpu_tensors(model)))
    stats = collect_stats(src, tensors, [x], histogram=False, means=means)
    ranges = {n: s.to_json(CalibMethod.minmax) for n, s in stats.items()}
    amax = {n: r["amax"] for n, r in ranges.items()}
    subset = [x[0:24:3]]
    corrector = bc._Corrector(src, amax, plan, None)
    fp32_targets, _ = bc._layer_means(corrector.fp32, bc._tail_layers(corrector.fp32, plan, 2), subset, 16)
    targets = {node: means.mean(t) for node, t, _ in tail}
    for node in fp32_targets:
        np.testing.assert_allclose(targets[node], fp32_targets[node], rtol=1e-5, atol=1e-6)

    ran = []
    real_tail = bc._tail_means
    monkeypatch.setattr(bc, "_tail_means", lambda *a: ran.append(1) or real_tail(*a))
    for cpu in (None, ranges):
        shortcut = bc.local_and_drift(src, amax, subset, plan=plan, cpu_ranges=cpu, targets=targets)[0]
        with monkeypatch.context() as m:
            m.setattr(bc, "_tail_means", lambda *a: {})  # every round a full pass, targets from an FP32 pass
            m.setattr(bc, "_linear_mean", lambda *a: None)  # an FP32 twin node per layer
            full = bc.local_and_drift(src, amax, subset, plan=plan, cpu_ranges=cpu)[0]
        assert set(shortcut) == set(full) == {"stem", "conv1", "conv2", "dw", "fc"}
        for node in full:
            np.testing.assert_allclose(shortcut[node], full[node], rtol=1e-4, atol=1e-6, err_msg=node)
    assert len(ran) == 2  # one tail round per graph

    cpu = bc._Corrector(src, amax, plan, ranges)
    written = cpu.build(shortcut)
    rebuilt = bc._quantized_cpu(src, ranges, plan, shortcut)

    def biases(m):
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        producer = {o: n for n in m.graph.node for o in n.output}
        return {n.name: inits[producer[n.input[2]].input[0]] for n in m.graph.node if n.op_type in ("Conv", "Gemm")}

    assert biases(written).keys() == biases(rebuilt).keys() == set(shortcut)
    for node, value in biases(rebuilt).items():
        assert value.dtype == np.int32 and np.array_equal(biases(written)[node], value), node
