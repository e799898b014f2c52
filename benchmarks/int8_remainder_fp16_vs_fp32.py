"""FP16 against FP32 remainder in ``model.int8.onnx`` (issue 11, item 1), same models, calibration and images.

    .venv/bin/python benchmarks/int8_remainder_fp16_vs_fp32.py [--out DIR] [--threads 2] [--runs 200]

Models: deploykit's LeNet and ResNet-18 (3x32x32) trained on scikit-learn's digits as in
``common.train`` (cached in --out). Each is exported twice through the export pipeline (``export_folder``,
the same code as ``deploykit export --int8 --calib digits --data digits``) with ``--int8-remainder fp16`` and
``fp32``; the export's own INT8 gate on the held-out digits is reported (passed / its agreement), then every figure
on the 360 held-out images through ONNX Runtime CPU against the FP32 ONNX: top-1 agreement, logit cosine min/mean,
accuracy; the file's size; ORT CPU latency at batch 1 (median of --runs after warm-up, --threads threads).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import closeness, train


def latency_ms(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    from deploykit.runners.onnxrt import DISABLED_OPTIMIZERS

    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))  # as deploykit's runner
    name = sess.get_inputs()[0].name
    for _ in range(20):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/precision_remainder"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["lenet", "resnet18"])
    args = parser.parse_args()
    from deploykit.data import Bundled, Split, bundled_images
    from deploykit.pipeline import export_folder
    from deploykit.precision import PrecisionRequest
    from deploykit.precision.remainder import Remainder
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    rows = []
    for name in args.models:
        ckpt = train(args.out, name)
        for remainder in Remainder:
            folder = args.out / f"{name}-{remainder.value}"
            start = time.perf_counter()
            result = export_folder(ckpt, out=folder, precision=PrecisionRequest(
                int8=True, calib=Path("digits"), int8_remainder=remainder), data=Path("digits"), verify=True,
                force=True)
            seconds = time.perf_counter() - start
            entry = result.manifest.artifact("model.int8.onnx")
            pre = result.loaded.preprocess
            val = bundled_images(Bundled.digits, Split.val)
            batch, labels = val.load(pre), np.array(val.labels)
            reference = OnnxRuntimeRunner(folder / "model.onnx", threads=args.threads).infer(batch)
            row = {"model": name, "remainder": remainder.value, "export_s": round(seconds, 1),
                   "gate_passed": entry["parity"]["passed"],
                   "gate_agreement": entry["parity"]["metrics"]["top1_agreement"],
                   **closeness(folder / "model.int8.onnx", batch, reference, labels, args.threads),
                   "fp32_accuracy": round(100 * float((reference.argmax(1) == labels).mean()), 2),
                   "bytes": (folder / "model.int8.onnx").stat().st_size,
                   "fp32_bytes": (folder / "model.onnx").stat().st_size,
                   "latency_ms": round(latency_ms(folder / "model.int8.onnx", batch[:1], args.threads, args.runs), 3),
                   "fp32_latency_ms": round(latency_ms(folder / "model.onnx", batch[:1], args.threads, args.runs), 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| model | remainder | export gate | top-1 agree | cos min / mean | acc % (FP32) | bytes | ORT CPU ms "
          "(FP32 ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['remainder']} | {'passed' if r['gate_passed'] else 'FAILED'} "
              f"({r['gate_agreement']:.4f}) | {r['top1_agreement']:.4f} | {r['cos_min']:.4f} / {r['cos_mean']:.5f} | "
              f"{r['accuracy']:.2f} ({r['fp32_accuracy']:.2f}) | {r['bytes']:,} | {r['latency_ms']:.3f} "
              f"({r['fp32_latency_ms']:.3f}) |")


if __name__ == "__main__":
    main()
