"""INT8 quantization noise per calibration/correction recipe, on held-out crops (research harness, issue 11).

    PYTHONPATH=src python benchmarks/int8_recipes.py /tmp/i8/lite0 [/tmp/i8/lite1 ...] --recipes entropy,auto+bc

Each folder is a `deploykit export` folder (model.onnx + deploykit.json). Statistics (histograms of |x| of every
tensor either quantizer may ask for) are gathered once per model on the calibration crops and pickled beside it;
each recipe then sets the ranges (and bias shifts), writes `model.int8.onnx` (TensorRT Q/DQ) and
`model.int8-cpu.onnx` (ORT QOperator) and compares both with FP32 on the evaluation crops (``common.int8_crops``):
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
import sys
import time
from pathlib import Path

from common import Model, infer, int8_crops, metrics, ranges_for


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
    parser.add_argument("--calib", type=Path, help="calibration folder (default: common.int8_crops' crops)")
    parser.add_argument("--eval", type=Path, help="evaluation folder (default: common.int8_crops' held-out crops)")
    parser.add_argument("--jsonl", type=Path, default=Path("/tmp/i8/results.jsonl"))
    args = parser.parse_args()
    calib, evals = (args.calib, args.eval) if args.calib and args.eval else int8_crops(args.images)
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
