"""deploykit INT8 side by side with NNCF and NVIDIA ModelOpt on the same graphs and images (issue 11).

    python3.11 -m venv /tmp/nncfvenv && /tmp/nncfvenv/bin/pip install nncf onnx onnxruntime
    python3.11 -m venv /tmp/movenv && /tmp/movenv/bin/pip install 'nvidia-modelopt[onnx]'
    PYTHONPATH=src python benchmarks/int8_vs_nncf_modelopt.py /tmp/i8/lite0 /tmp/i8/lite1 ... \\
        --nncf-python /tmp/nncfvenv/bin/python --modelopt-python /tmp/movenv/bin/python

Each folder is a `deploykit export` folder (model.onnx + deploykit.json). The anchors run in their own venvs
(subprocess) on deploykit's `model.onnx` and the same preprocessed calibration crops (``common.int8_crops``, seed 0,
held-out photos excluded); every graph is then run by this venv's ONNX Runtime (CPU) on the held-out crops and
compared with FP32: top-1 agreement overall and on confident crops (FP32 max prob > 0.5), logit cosine mean/min,
and batch-1 latency (median of --runs, 2 threads). deploykit's rows come from its library calls with the default
settings (`calibrate` + `quantize_trt` / `quantize_cpu`), and, for "before", the entropy ranges without bias
correction (the default until issue 11).

NNCF: `nncf.quantize(model, dataset, subset_size=N)` (default preset: symmetric activations, per-channel weights,
fast bias correction) and with `fast_bias_correction=False` (its full BiasCorrection). ModelOpt:
`python -m modelopt.onnx.quantization --quantize_mode int8 --calibration_eps cpu --high_precision_dtype fp32`
(its default int8 calibration).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import infer, int8_crops, metrics, session

NNCF_CODE = r"""
import sys, time, numpy as np, onnx, nncf
src, calib, dest, mode = sys.argv[1:]
model = onnx.load(src)
x = np.load(calib)
name = model.graph.input[0].name
ds = nncf.Dataset([x[i:i + 1] for i in range(len(x))], lambda a: {name: a})
kw = {"fast_bias_correction": False} if mode == "full-bc" else {}
t = time.perf_counter()
q = nncf.quantize(model, ds, subset_size=len(x), **kw)
onnx.save(q, dest)
print("NNCF", nncf.__version__, "seconds", round(time.perf_counter() - t, 1))
"""


def latency(path: Path, x: np.ndarray, runs: int) -> float:
    s = session(path)
    name = s.get_inputs()[0].name
    one = x[:1]
    for _ in range(3):
        s.run(None, {name: one})
    times = []
    for i in range(runs):
        t = time.perf_counter()
        s.run(None, {name: x[i % len(x):i % len(x) + 1]})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def deploykit_graphs(folder: Path, calib_paths, pre, out: Path, *, before: bool) -> dict[str, Path]:
    import onnx

    from deploykit.data import ImageSet
    from deploykit.precision.calibrate import CalibMethod, calibrate
    from deploykit.precision.int8 import cpu_tensors, plan_trt, quantize_cpu, quantize_trt

    src = folder / "model.onnx"
    model = onnx.load(str(src))
    plan = plan_trt(model)
    tensors = list(dict.fromkeys(list(plan.activation_tensors) + cpu_tensors(model)))
    images = ImageSet(tuple(calib_paths), None, None, "calib")
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if before:  # the code before issue 11: entropy on every tensor, no graph bounds, no bias correction
        from deploykit.precision.calibrate import collect_stats, image_batches

        stats = collect_stats(src, tensors, image_batches(images, pre), histogram=True)
        tensors_json, bias = {n: s.to_json(CalibMethod.entropy) for n, s in stats.items()}, None
    else:
        ranges = calibrate(src, tensors, images, pre, CalibMethod.default(), cache_dir=out)
        tensors_json, bias = ranges.tensors, ranges.bias
    amax = {n: r["amax"] for n, r in tensors_json.items()}
    quantize_trt(src, out / "model.int8.onnx", amax, plan=plan, bias=bias)
    quantize_cpu(src, out / "model.int8-cpu.onnx", tensors_json, plan=plan, bias=bias)
    print(f"  deploykit {'before' if before else 'default'} {folder.name}: {time.perf_counter() - t:.1f}s",
          file=sys.stderr)
    return {"model.int8.onnx": out / "model.int8.onnx", "model.int8-cpu.onnx": out / "model.int8-cpu.onnx"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--images", type=Path, default=Path("/tmp/i8/img"))
    parser.add_argument("--n-calib", type=int, default=200)
    parser.add_argument("--nncf-python", type=Path)
    parser.add_argument("--modelopt-python", type=Path)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/i8/anchors"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--calib", type=Path, help="calibration folder (default: common.int8_crops' crops)")
    parser.add_argument("--eval", type=Path, help="evaluation folder (default: common.int8_crops' held-out crops)")
    args = parser.parse_args()
    from deploykit.manifest import Manifest

    calib, evals = int8_crops(args.images)
    calib, evals = args.calib or calib, args.eval or evals
    calib_paths = sorted(p for p in calib.iterdir() if p.is_file())[:args.n_calib]
    eval_paths = sorted(p for p in evals.iterdir() if p.is_file() or p.is_dir())
    eval_paths = [q for p in eval_paths for q in (sorted(p.iterdir()) if p.is_dir() else [p])]
    results = {"host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"{time.strftime('%Y-%m-%d')}", "models": {}}
    for folder in args.folders:
        pre = Manifest.load(folder).preprocessing
        x = pre.batch(eval_paths)
        src = folder / "model.onnx"
        ref = infer(src, x)
        work = args.out / folder.name
        work.mkdir(parents=True, exist_ok=True)
        graphs = {"FP32": src}
        for before in (True, False):
            tag = "deploykit before (entropy)" if before else "deploykit default"
            for name, path in deploykit_graphs(folder, calib_paths, pre, work / ("before" if before else "default"),
                                               before=before).items():
                graphs[f"{tag} {name}"] = path
        with tempfile.TemporaryDirectory() as tmp:
            calib_npy = Path(tmp) / "calib.npy"
            np.save(calib_npy, pre.batch(calib_paths))
            if args.nncf_python:
                for mode, label in (("default", "NNCF default"), ("full-bc", "NNCF full bias correction")):
                    dest = work / f"nncf-{mode}.onnx"
                    proc = subprocess.run([str(args.nncf_python), "-c", NNCF_CODE, str(src), str(calib_npy),
                                           str(dest), mode], capture_output=True, text=True)
                    if proc.returncode == 0:
                        graphs[label] = dest
                        print(f"  {label} {folder.name}: {proc.stdout.strip().splitlines()[-1]}", file=sys.stderr)
                    else:
                        print(f"  {label} failed: {proc.stderr.strip()[-800:]}", file=sys.stderr)
            if args.modelopt_python:
                dest = work / "modelopt-int8.onnx"
                t = time.perf_counter()
                proc = subprocess.run([str(args.modelopt_python), "-m", "modelopt.onnx.quantization", "--onnx_path",
                                       str(src), "--quantize_mode", "int8", "--calibration_data_path",
                                       str(calib_npy), "--calibration_eps", "cpu", "--high_precision_dtype",
                                       "fp32", "--output_path", str(dest)], capture_output=True, text=True)
                if proc.returncode == 0 and dest.is_file():
                    graphs["ModelOpt int8"] = dest
                    print(f"  ModelOpt {folder.name}: {time.perf_counter() - t:.1f}s", file=sys.stderr)
                else:
                    print(f"  ModelOpt failed: {proc.stderr.strip()[-800:]}", file=sys.stderr)
        rows = {}
        for label, path in graphs.items():
            row = metrics(ref, infer(path, x)) if label != "FP32" else {}
            row["latency_ms"] = round(latency(path, x, args.runs), 2)
            rows[label] = row
            print(f"{folder.name:12s} {label:44s} " + " ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        results["models"][folder.name] = {"images": len(x), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["host"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
