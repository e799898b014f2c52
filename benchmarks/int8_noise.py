"""INT8 quantization noise per calibration/correction recipe, on held-out crops (research harness, issue 11).

    PYTHONPATH=src python benchmarks/int8_noise.py /tmp/i8/lite0 [/tmp/i8/lite1 ...] --recipes entropy,auto+bc

Each folder is a `deploykit export` folder (model.onnx + deploykit.json). Statistics (histograms of |x| of every
tensor either quantizer may ask for) are gathered once per model on the calibration crops and pickled beside it;
each recipe then sets the ranges (and bias shifts), writes `model.int8.onnx` (TensorRT Q/DQ) and
`model.int8-cpu.onnx` (ORT QOperator) and compares both with FP32 on the evaluation crops (int8_images.py):
top-1 agreement overall and on confident crops (FP32 max prob > 0.5), logit cosine mean/min.

Recipe = '+'-joined parts: a range method (entropy, minmax, percentile, mse), optional `b` (graph-bounded
tensors keep their observed range), `bc` (bias correction, depthwise included), `fbc` (fast: depthwise
skipped), `bc2` (two rounds), `drR` (local correction, then drift correction of
the last R layers, one pass each; `ddK` damping K/10), `cpubc` (the CPU graph gets shifts measured on itself, with
the same local/drift settings, as the default does since deploykit-calib/8; without it the CPU graph gets the
TensorRT graph's shifts). The default is `mse+b+dr2+cpumax+cpubc`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def infer(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    s = session(path)
    name = s.get_inputs()[0].name
    fixed = s.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch
    out = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        real = len(chunk)
        if isinstance(fixed, int) and real < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, 0)])
        out.append(s.run(None, {name: chunk})[0][:real])
    return np.concatenate(out).astype(np.float64)


def metrics(ref: np.ndarray, out: np.ndarray) -> dict:
    conf = softmax(ref).max(1) > 0.5
    agree = ref.argmax(1) == out.argmax(1)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1) + 1e-12)
    return {"agree": round(float(agree.mean()), 4), "agree_conf": round(float(agree[conf].mean()), 4),
            "n_conf": int(conf.sum()), "cos_mean": round(float(cos.mean()), 5), "cos_min": round(float(cos.min()), 4),
            "mse": float(((ref - out) ** 2).mean())}


class Model:
    def __init__(self, folder: Path, calib: Path, evals: Path, n_calib: int):
        import onnx

        from deploykit.manifest import Manifest
        from deploykit.precision.calibrate import collect_stats
        from deploykit.precision.int8 import cpu_tensors, plan_trt

        self.folder = folder
        self.src = folder / "model.onnx"
        self.model = onnx.load(str(self.src))
        self.plan = plan_trt(self.model)
        self.pre = Manifest.load(folder).preprocessing
        calib_paths = sorted(p for p in calib.iterdir() if p.is_file())[:n_calib]
        self.calib_paths = calib_paths
        eval_paths = sorted(p for p in evals.iterdir() if p.is_file())
        cache = folder / f"stats-{calib.name}-{n_calib}.pkl"
        tensors = list(dict.fromkeys(list(self.plan.activation_tensors) + cpu_tensors(self.model)))
        if cache.is_file():
            self.stats = pickle.loads(cache.read_bytes())
        else:
            t = time.perf_counter()
            batches = (self.pre.batch(calib_paths[i:i + 32]) for i in range(0, len(calib_paths), 32))
            self.stats = collect_stats(self.src, tensors, batches, histogram=True)
            cache.write_bytes(pickle.dumps(self.stats))
            print(f"  stats {folder.name}: {time.perf_counter() - t:.1f}s", file=sys.stderr)
        ref_cache = folder / f"ref-{evals.name}.npz"
        self.x = self.pre.batch(eval_paths)
        if ref_cache.is_file():
            self.ref = np.load(ref_cache)["ref"]
        else:
            self.ref = infer(self.src, self.x)
            np.savez(ref_cache, ref=self.ref)

    def calib_batches(self, n: int):
        from deploykit.precision.calibrate import spread

        paths = spread(self.calib_paths, n)
        return (self.pre.batch(paths[i:i + 16]) for i in range(0, len(paths), 16))


def ranges_for(m: Model, parts: set[str]) -> dict[str, dict[str, float]]:
    from deploykit.precision.calibrate import CalibMethod
    from deploykit.precision.ranges import bounded_tensors, mse_threshold

    bounded = bounded_tensors(m.model) if "b" in parts else {}
    out = {}
    for name, st in m.stats.items():
        if "mse" in parts:
            amax = st.amax if st.exact else mse_threshold(st.hist, st.edge, st.amax)
        else:
            method = next(CalibMethod(p) for p in parts if p in {c.value for c in CalibMethod})
            amax = st.threshold(method)
        if name in bounded:
            amax = st.amax
        out[name] = {"min": st.lo if np.isfinite(st.lo) else 0.0, "max": st.hi if np.isfinite(st.hi) else 0.0,
                     "amax": amax}
        if "cpumax" in parts and "mse" in parts:
            out[name] = st.to_json(CalibMethod.mse, name in bounded)
    return out


def run_recipe(m: Model, recipe: str, out_root: Path, bc_images: int) -> dict:
    from deploykit.precision.bias_correction import measure_shifts
    from deploykit.precision.int8 import quantize_cpu, quantize_trt

    parts = set(recipe.split("+"))
    t0 = time.perf_counter()
    ranges = ranges_for(m, parts)
    amax = {n: r["amax"] for n, r in ranges.items()}
    shifts = None
    drift = next((p for p in parts if p.startswith("dr") and p[2:].isdigit()), None)
    if drift:  # drift bias correction: drR = last R layers, ddK = damping K/10
        damp = next((int(p[2:]) / 10 for p in parts if p.startswith("dd") and p[2:].isdigit()), 1.0)
        shifts = measure_shifts(m.src, amax, m.calib_batches(bc_images), plan=m.plan, mode="drift",
                                rounds=int(drift[2:]), damping=damp)
    elif parts & {"bc", "fbc", "bc2"}:
        shifts = measure_shifts(m.src, amax, m.calib_batches(bc_images), plan=m.plan, skip_depthwise="fbc" in parts)
        if "bc2" in parts:
            shifts = measure_shifts(m.src, amax, m.calib_batches(bc_images), plan=m.plan, shifts=shifts)
    cpu_shifts = shifts
    if "cpubc" in parts and shifts is not None:  # the CPU graph's own shifts, measured the same way on it
        rounds = int(drift[2:]) if drift else 0
        cpu_shifts = measure_shifts(m.src, amax, m.calib_batches(bc_images), plan=m.plan, cpu_ranges=ranges,
                                    mode="drift" if drift else "local", rounds=rounds)
    t_prep = time.perf_counter() - t0
    dest = out_root / m.folder.name / recipe
    dest.mkdir(parents=True, exist_ok=True)
    quantize_trt(m.src, dest / "model.int8.onnx", amax, plan=m.plan, bias=shifts)
    quantize_cpu(m.src, dest / "model.int8-cpu.onnx", ranges, plan=m.plan, bias=cpu_shifts)
    row = {"model": m.folder.name, "recipe": recipe, "prep_s": round(t_prep, 1)}
    for name in ("model.int8.onnx", "model.int8-cpu.onnx"):
        row[name] = metrics(m.ref, infer(dest / name, m.x))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--recipes", default="entropy")
    parser.add_argument("--images", type=Path, default=Path("/tmp/i8/img"))
    parser.add_argument("--n-calib", type=int, default=200)
    parser.add_argument("--bc-images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("/tmp/i8/q"))
    parser.add_argument("--calib", type=Path, help="calibration folder (default: int8_images' crops)")
    parser.add_argument("--eval", type=Path, help="evaluation folder (default: int8_images' held-out crops)")
    parser.add_argument("--jsonl", type=Path, default=Path("/tmp/i8/results.jsonl"))
    args = parser.parse_args()
    from int8_images import ensure

    calib, evals = (args.calib, args.eval) if args.calib and args.eval else ensure(args.images)
    for folder in args.folders:
        m = Model(folder, calib, evals, args.n_calib)
        for recipe in args.recipes.split(","):
            row = run_recipe(m, recipe, args.out, args.bc_images)
            t, c = row["model.int8.onnx"], row["model.int8-cpu.onnx"]
            print(f"{row['model']:10s} {recipe:22s} trt agree {t['agree']:.3f} conf {t['agree_conf']:.3f} "
                  f"cos {t['cos_mean']:.4f}/{t['cos_min']:.3f} | cpu agree {c['agree']:.3f} conf "
                  f"{c['agree_conf']:.3f} cos {c['cos_mean']:.4f}/{c['cos_min']:.3f} | n_conf {t['n_conf']} "
                  f"prep {row['prep_s']}s", flush=True)
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
