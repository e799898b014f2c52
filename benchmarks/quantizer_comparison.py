"""Choosing the engine of quantization with data (issue 3, item 6): same models, same images, every candidate.

    .venv/bin/python benchmarks/quantizer_comparison.py [--out DIR] [--threads 2]
        [--fp16-python /tmp/fp16venv/bin/python] [--modelopt-python /tmp/movenv/bin/python]

INT8: our TensorRT Q/DQ placement (``quantize_trt``) with our calibration (entropy, minmax) against
``onnxruntime.quantization.quantize_static`` (QuantFormat.QDQ, symmetric int8 activations and weights, per-channel
weights; its MinMax and Entropy calibrators), plus ORT's QDQ placement fed *our* entropy ranges (placement alone
differs) and our CPU artifact (QOperator u8s8). FP16: our converter (ORT's converter + our keep rules + the
round-trip fix) against ORT's converter with its defaults and onnxconverter-common's ``float16`` (which must not
go into the project venv: pass ``--fp16-python`` of a separate venv that has it; the row is skipped otherwise).
NVIDIA ModelOpt (pins onnx/onnxruntime-gpu, pulls cupy and torch) runs only from a separate venv
(``--modelopt-python``); skipped otherwise.

Models: deploykit's LeNet and ResNet-18 (3x32x32 input, so the residual Adds are there) trained here with
``deploykit.train.fit`` on scikit-learn's digits (train split, cached in --out); calibration on 512 images of the
train split; every figure on the 360 held-out images (val split), through ONNX Runtime CPU, against the FP32 ONNX.

Graph columns: Q / DQ node counts; Conv/Gemm/MatMul layers with int8 activation *and* weight (DQ on both, or an
ORT integer op) out of all; Add nodes by how many inputs come from a DQ; int32 bias DQ nodes (TensorRT cannot
take them); other ops that read a DQ output (ops ORT wraps in Q/DQ besides the matmuls). FP16: Cast nodes and
compute nodes left in FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import DIGITS_MODELS, closeness, train

MATMULS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger")
SHAPE_OPS = ("Cast", "Constant", "Shape", "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Concat",
             "Gather", "QuantizeLinear", "DequantizeLinear")


def int8_graph(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    ops = Counter(n.op_type for n in nodes)

    def dq(name: str) -> bool:
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    layers = [n for n in nodes if n.op_type in MATMULS]
    int8 = [n for n in layers if len(n.input) > 1 and dq(n.input[0]) and dq(n.input[1])]
    int8 += [n for n in nodes if n.op_type in INTEGER_OPS]
    adds = Counter(sum(dq(i) for i in n.input) for n in nodes if n.op_type == "Add")
    int32_bias = sum(1 for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in inits
                     and inits[n.input[0]].data_type == onnx.TensorProto.INT32)
    others = sum(1 for n in nodes if n.op_type not in MATMULS + ("QuantizeLinear", "DequantizeLinear", "Add")
                 and any(dq(i) for i in n.input))
    return {"Q": ops["QuantizeLinear"], "DQ": ops["DequantizeLinear"], "int8_layers": len(int8),
            "layers": len(layers) + sum(ops[o] for o in INTEGER_OPS), "add_dq_inputs": dict(sorted(adds.items())),
            "int32_bias_dq": int32_bias, "other_ops_on_dq": others}


def fp16_graph(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    compute = [n for n in model.graph.node if n.op_type not in SHAPE_OPS]
    fp32 = [n for n in compute if any(types.get(o) == onnx.TensorProto.FLOAT for o in n.output)]
    return {"casts": sum(1 for n in model.graph.node if n.op_type == "Cast"), "compute_nodes": len(compute),
            "fp32_compute_nodes": len(fp32), "fp32_ops": dict(Counter(n.op_type for n in fp32))}


def reader(name: str, batch: np.ndarray):
    """onnxruntime.quantization's CalibrationDataReader over a preprocessed batch (one image per run)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{name: batch[i:i + 1]} for i in range(len(batch))])

        def get_next(self):
            return next(self.feeds, None)

    return Reader()


@dataclass
class Case:
    """One model, exported to FP32 ONNX, with its calibration and held-out digits: what every candidate is given."""

    name: str
    work: Path
    threads: int
    results: list
    fp32: Path
    calib: object  # deploykit.data.ImageSet
    calib_batch: np.ndarray
    batch: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    ref_acc: float
    model: object  # onnx.ModelProto
    plan: object  # deploykit.precision.int8 TrtPlan
    pre: object  # deploykit.preprocess.Preprocess

    @property
    def input_name(self) -> str:
        return self.model.graph.input[0].name

    def row(self, kind: str, engine: str, path: Path, seconds: float | None, graph: dict) -> None:
        entry = {"model": self.name, "kind": kind, "engine": engine,
                 "seconds": None if seconds is None else round(seconds, 1),
                 "fp32_accuracy": self.ref_acc,
                 **closeness(path, self.batch, self.reference, self.labels, self.threads), **graph}
        self.results.append(entry)
        print(json.dumps(entry), flush=True)


def prepare(name: str, args, results: list) -> Case:
    """Train (cached) and export the model, load 512 calibration and the held-out digits, run FP32 once."""
    import onnx

    from deploykit.data import Bundled, Split, bundled_images
    from deploykit.parity import label_indices
    from deploykit.pipeline import export_folder
    from deploykit.precision.int8 import plan_trt
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    work = args.out / name
    work.mkdir(parents=True, exist_ok=True)
    exported = export_folder(train(args.out, name), out=work / "export", verify=False)
    fp32, pre = exported.folder / "model.onnx", exported.loaded.preprocess
    calib = bundled_images(Bundled.digits, Split.train).sample(512)
    val = bundled_images(Bundled.digits, Split.val)
    calib_batch, batch = calib.load(pre), val.load(pre)
    labels = label_indices(val, exported.loaded.class_names, exported.loaded.num_classes)
    reference = OnnxRuntimeRunner(fp32, threads=args.threads).infer(batch)
    ref_acc = round(100 * float((reference.argmax(1) == labels).mean()), 2)
    model = onnx.load(str(fp32))
    return Case(name, work, args.threads, results, fp32, calib, calib_batch, batch, labels, reference, ref_acc,
                model, plan_trt(model), pre)


def int8_ours(c: Case) -> None:
    """Our TensorRT placement with our calibration (entropy, minmax), and ORT's placement fed our ranges."""
    from deploykit.precision.calibrate import CalibMethod, calibrate
    from deploykit.precision.int8 import CpuFormat, cpu_tensors, quantize_cpu, quantize_trt

    for method in (CalibMethod.entropy, CalibMethod.minmax):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            ranges = calibrate(c.fp32, c.plan.activation_tensors, c.calib, c.pre, method, cache_dir=Path(cache))
            dest = c.work / f"ours-trt-{method.value}.onnx"
            quantize_trt(c.fp32, dest, {n: r["amax"] for n, r in ranges.tensors.items()}, plan=c.plan)
            c.row("int8", f"ours: TensorRT placement, {method.value}", dest, time.perf_counter() - start,
                  int8_graph(dest))
    with tempfile.TemporaryDirectory() as cache:  # every float tensor: what ORT's quantizer may ask a range for
        tensors = list(dict.fromkeys(c.plan.activation_tensors + cpu_tensors(c.model)))
        start = time.perf_counter()
        ranges = calibrate(c.fp32, tensors, c.calib, c.pre, CalibMethod.entropy, cache_dir=Path(cache))
        calib_s = time.perf_counter() - start
    for fmt, label in ((CpuFormat.qdq_s8s8, "ORT QDQ placement, our entropy ranges (s8s8 symmetric)"),
                       (CpuFormat.qoperator_u8s8, "ours for CPU: ORT QOperator u8s8, our entropy ranges")):
        dest = c.work / f"ort-placement-{fmt.value}.onnx"
        start = time.perf_counter()
        quantize_cpu(c.fp32, dest, ranges.tensors, fmt=fmt, plan=c.plan)
        c.row("int8", label, dest, calib_s + time.perf_counter() - start, int8_graph(dest))


def int8_onnxruntime(c: Case) -> None:
    """ORT's ``quantize_static`` (MinMax, Entropy), and ORT's entropy calibrator at TensorRT's resolution with our
    placement."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, create_calibrator, quantize_static

    from deploykit.precision.int8 import quantize_trt

    for method in (CalibrationMethod.MinMax, CalibrationMethod.Entropy):
        dest = c.work / f"ort-quantize-static-{method.name.lower()}.onnx"
        start = time.perf_counter()
        quantize_static(str(c.fp32), str(dest), reader(c.input_name, c.calib_batch), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        c.row("int8", f"onnxruntime quantize_static QDQ, {method.name}", dest, time.perf_counter() - start,
              int8_graph(dest))
    # ORT's entropy calibrator at TensorRT's resolution (2048 bins -> 128 levels; quantize_static cannot set it and
    # uses 128 -> 128, a single candidate threshold: the max) with our placement: calibrators compared alone
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(c.fp32, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128})
        calibrator.collect_data(reader(c.input_name, c.calib_batch))
        data = calibrator.compute_data()
    amax = {n: float(max(abs(np.asarray(data[n].range_value[0]).max()), abs(np.asarray(data[n].range_value[1]).max())))
            for n in c.plan.activation_tensors}
    dest = c.work / "ours-trt-ort-entropy2048.onnx"
    quantize_trt(c.fp32, dest, amax, plan=c.plan)
    c.row("int8", "our placement, ORT EntropyCalibrater 2048->128 bins", dest, time.perf_counter() - start,
          int8_graph(dest))


def int8_modelopt(c: Case, modelopt_python: Path) -> None:
    """NVIDIA ModelOpt's ONNX INT8 (entropy, max), run from its own venv."""
    np.save(c.work / "calib.npy", c.calib_batch)
    for method in ("entropy", "max"):
        dest = c.work / f"modelopt-int8-{method}.onnx"
        start = time.perf_counter()
        proc = subprocess.run([str(modelopt_python), "-m", "modelopt.onnx.quantization", "--onnx_path",
                               str(c.fp32), "--quantize_mode", "int8", "--calibration_data_path",
                               str(c.work / "calib.npy"), "--calibration_method", method,
                               "--calibration_eps", "cpu", "--high_precision_dtype", "fp32",
                               "--output_path", str(dest)],
                              capture_output=True, text=True)
        if proc.returncode == 0 and dest.is_file():
            c.row("int8", f"NVIDIA ModelOpt int8, {method}", dest, time.perf_counter() - start, int8_graph(dest))
        else:
            print(f"modelopt int8 {method} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)


def fp16_ours_and_onnxruntime(c: Case) -> None:
    """Our converter (ORT's + keep rules + round-trip fix) and ORT's converter with its defaults."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from deploykit.precision.calibrate import collect_stats
    from deploykit.precision.fp16 import convert_fp16
    from deploykit.precision.int8 import cpu_tensors

    start = time.perf_counter()
    stats = collect_stats(c.fp32, cpu_tensors(c.model), [c.calib_batch], histogram=False)
    dest = c.work / "ours-fp16.onnx"
    graph = convert_fp16(c.fp32, dest, {n: s.amax for n, s in stats.items()})
    c.row("fp16", "ours: ORT converter + keep rules + round-trip fix", dest, time.perf_counter() - start,
          {**fp16_graph(dest), "kept_fp32_listed": len(graph.kept_fp32)})
    dest = c.work / "ort-float16-defaults.onnx"
    start = time.perf_counter()
    onnx.save(convert_float_to_float16(onnx.load(str(c.fp32)), keep_io_types=True), str(dest))
    c.row("fp16", "onnxruntime.transformers.float16, defaults", dest, time.perf_counter() - start, fp16_graph(dest))


def fp16_onnxconverter(c: Case, fp16_python: Path) -> None:
    """onnxconverter-common's ``float16``, run from a separate venv (it must not go into the project venv)."""
    dest = c.work / "onnxconverter-common-float16.onnx"
    code = ("import sys, onnx; from onnxconverter_common import float16; "
            "onnx.save(float16.convert_float_to_float16(onnx.load(sys.argv[1]), keep_io_types=True), sys.argv[2])")
    start = time.perf_counter()
    proc = subprocess.run([str(fp16_python), "-c", code, str(c.fp32), str(dest)], capture_output=True,
                          text=True)
    if proc.returncode == 0:
        version = subprocess.run([str(fp16_python), "-c", "import onnxconverter_common as o; "
                                  "print(o.__version__)"], capture_output=True, text=True).stdout.strip()
        c.row("fp16", f"onnxconverter-common {version} float16, keep_io_types", dest,
              time.perf_counter() - start, fp16_graph(dest))
    else:
        print(f"onnxconverter-common failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)


def fp16_modelopt(c: Case, modelopt_python: Path) -> None:
    """NVIDIA ModelOpt's AutoCast to FP16, run from its own venv."""
    np.savez(c.work / "calib.npz", **{c.input_name: c.calib_batch})  # AutoCast reads .npz keyed by input name
    dest = c.work / "modelopt-autocast-fp16.onnx"
    start = time.perf_counter()
    proc = subprocess.run([str(modelopt_python), "-m", "modelopt.onnx.autocast", "--onnx_path", str(c.fp32),
                           "--output_path", str(dest), "--low_precision_type", "fp16", "--keep_io_types",
                           "--calibration_data", str(c.work / "calib.npz"), "--providers", "cpu"],
                          capture_output=True, text=True)
    if proc.returncode == 0 and dest.is_file():
        c.row("fp16", "NVIDIA ModelOpt AutoCast fp16", dest, time.perf_counter() - start, fp16_graph(dest))
    else:
        print(f"modelopt autocast failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)


def run_model(name: str, args, results: list) -> None:
    """Every candidate on one model, in the order of the tables: INT8 first, then FP16."""
    case = prepare(name, args, results)
    int8_ours(case)
    int8_onnxruntime(case)
    if args.modelopt_python:
        int8_modelopt(case, args.modelopt_python)
    fp16_ours_and_onnxruntime(case)
    if args.fp16_python:
        fp16_onnxconverter(case, args.fp16_python)
    if args.modelopt_python:
        fp16_modelopt(case, args.modelopt_python)


def markdown(results: list[dict]) -> str:
    lines = ["| model | engine | Q / DQ | int8 layers | Add: inputs from DQ (0/1/2) | int32 bias DQ | other ops on DQ "
             "| top-1 agree | cos min / mean | acc % (FP32) | s |", "| --- " * 11 + "|"]
    for r in (r for r in results if r["kind"] == "int8"):
        adds = "/".join(str(r["add_dq_inputs"].get(k, 0)) for k in (0, 1, 2))
        lines.append(f"| {r['model']} | {r['engine']} | {r['Q']} / {r['DQ']} | {r['int8_layers']}/{r['layers']} | "
                     f"{adds} | {r['int32_bias_dq']} | {r['other_ops_on_dq']} | {r['top1_agreement']:.4f} | "
                     f"{r['cos_min']:.4f} / {r['cos_mean']:.5f} | {r['accuracy']:.2f} ({r['fp32_accuracy']:.2f}) | "
                     f"{r['seconds']} |")
    lines += ["", "| model | engine | Casts | compute nodes in FP32 | top-1 agree | cos min / mean | acc % (FP32) |",
              "| --- " * 7 + "|"]
    for r in (r for r in results if r["kind"] == "fp16"):
        fp32_ops = ", ".join(f"{k} {v}" for k, v in sorted(r["fp32_ops"].items())) or "-"
        lines.append(f"| {r['model']} | {r['engine']} | {r['casts']} | {r['fp32_compute_nodes']}/"
                     f"{r['compute_nodes']} ({fp32_ops}) | {r['top1_agreement']:.4f} | {r['cos_min']:.6f} / "
                     f"{r['cos_mean']:.6f} | {r['accuracy']:.2f} ({r['fp32_accuracy']:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dk-bench-engines"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="lenet,resnet18", help="comma list of " + ",".join(DIGITS_MODELS))
    parser.add_argument("--fp16-python", type=Path, help="python of a venv with onnxconverter-common")
    parser.add_argument("--modelopt-python", type=Path, help="python of a venv with nvidia-modelopt[onnx]")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for name in args.models.split(","):
        run_model(name.strip(), args, results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
