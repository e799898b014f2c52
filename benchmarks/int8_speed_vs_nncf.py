"""Wall time of deploykit's INT8 stage against NNCF's `quantize` on the same ONNX graph, images and threads (issue 26).

    python3 -m venv /work/venv-anchors-26 && /work/venv-anchors-26/bin/pip install nncf onnx onnxruntime
    .venv/bin/python benchmarks/int8_speed_vs_nncf.py EXPORT_FOLDER --calib DIR --n 512 \\
        --nncf-python /work/venv-anchors-26/bin/python [--eval DIR] [--rounds 2] [--threads 2]

EXPORT_FOLDER is a `deploykit export` folder (its model.onnx and preprocessing). Each round runs, one after the
other in fresh processes pinned to the same ``--threads`` cores (``taskset``; ``OMP_NUM_THREADS`` likewise):

* deploykit: ``calibrate`` (statistics pass, mse ranges, bias correction of the TensorRT graph with its drift
  rounds) + ``quantize_trt`` (the Q/DQ graph), defaults, no cache; its time includes decoding and preprocessing
  the calibration images (NNCF is handed them preprocessed);
* NNCF: ``nncf.quantize(model, dataset, subset_size=n)`` with its default preset (symmetric, fast bias
  correction) in its own venv (``--nncf-python``); timed around ``quantize`` only.

The order alternates between rounds (the host is shared: a ratio is taken within a round, then the median of the
rounds). With ``--eval`` both graphs are compared with FP32 on those held-out images (ONNX Runtime CPU): top-1
agreement and logit cosine mean / min, the figures docs/precision.md reports. Not a test: minutes per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEPLOYKIT_CODE = r"""
import sys, time
from pathlib import Path
src, calib, n, dest, work = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
import onnx
from deploykit.manifest import Manifest
from deploykit.precision.calibrate import CalibMethod, calibrate, calibration_images
from deploykit.precision.int8 import plan_trt, quantize_trt
from deploykit.timings import Timings
pre = Manifest.load(Path(src).parent).preprocessing
images = calibration_images(calib, size=n, min_images=1)
t = time.perf_counter()
plan = plan_trt(onnx.load(src))
timings = Timings()
ranges = calibrate(Path(src), plan.activation_tensors, images, pre, CalibMethod.default(), cache_dir=work,
                   timings=timings)
with timings.stage("qdq"):
    quantize_trt(Path(src), Path(dest), {k: r["amax"] for k, r in ranges.tensors.items()}, plan=plan,
                 bias=ranges.bias)
print("deploykit seconds", round(time.perf_counter() - t, 2), timings.to_json())
"""

NNCF_CODE = r"""
import sys, time, numpy as np, onnx, nncf
src, calib, dest = sys.argv[1:]
model = onnx.load(src)
x = np.load(calib)
name = model.graph.input[0].name
batch = model.graph.input[0].type.tensor_type.shape.dim[0]
step = batch.dim_value if batch.HasField("dim_value") else 1
ds = nncf.Dataset([x[i:i + step] for i in range(0, len(x), step)], lambda a: {name: a})
t = time.perf_counter()
q = nncf.quantize(model, ds, subset_size=len(x) // step)
print("NNCF", nncf.__version__, "seconds", round(time.perf_counter() - t, 2))
onnx.save(q, dest)
"""


def run(cmd: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    pin = ["taskset", "-c", f"0-{threads - 1}"] if threads < (os.cpu_count() or 1) else []
    proc = subprocess.run(pin + cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a deploykit export folder (model.onnx + deploykit.json)")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--nncf-python", type=Path, required=True)
    parser.add_argument("--eval", type=Path, help="held-out images: agreement and cosine of both graphs with FP32")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--first", choices=("deploykit", "nncf"), default="deploykit", help="who runs first in "
                        "round 1 (then the order alternates)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "int8-speed-vs-nncf")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from deploykit.manifest import Manifest
    from deploykit.precision.calibrate import calibration_images

    src = (args.folder / "model.onnx").resolve()
    pre = Manifest.load(args.folder).preprocessing
    images = calibration_images(args.calib, size=args.n, min_images=1)  # the same seeded sample deploykit takes
    args.out.mkdir(parents=True, exist_ok=True)
    calib_npy = args.out / "calib.npy"
    np.save(calib_npy, pre.batch(list(images.paths)))
    rounds = []
    for r in range(args.rounds):
        seconds = {}
        order = ("deploykit", "nncf") if args.first == "deploykit" else ("nncf", "deploykit")
        for who in (order if r % 2 == 0 else order[::-1]):
            if who == "deploykit":
                with tempfile.TemporaryDirectory(dir=args.out) as work:
                    line = run([sys.executable, "-c", DEPLOYKIT_CODE, str(src), str(args.calib), str(args.n),
                                str(args.out / "deploykit.int8.onnx"), work], args.threads)
                seconds[who] = float(line.split()[2])
                seconds["deploykit_stages"] = json.loads(line.split(" ", 3)[3].replace("'", '"'))
            else:
                line = run([str(args.nncf_python), "-c", NNCF_CODE, str(src), str(calib_npy),
                            str(args.out / "nncf.int8.onnx")], args.threads)
                seconds[who] = float(line.split()[-1])
                seconds["nncf_version"] = line.split()[1]
        seconds["ratio"] = round(seconds["deploykit"] / seconds["nncf"], 3)
        seconds["load"] = os.getloadavg()[0]
        print(f"round {r + 1}: deploykit {seconds['deploykit']:.1f} s, NNCF {seconds['nncf']:.1f} s, "
              f"ratio {seconds['ratio']:.2f} (load {seconds['load']:.1f}) {seconds['deploykit_stages']}", flush=True)
        rounds.append(seconds)
    result = {"model": str(src), "images": args.n, "threads": args.threads, "rounds": rounds,
              "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3)}
    if args.eval:
        from int8_noise import infer, metrics

        paths = sorted(p for p in args.eval.iterdir() if p.is_file())
        x = pre.batch(paths)
        ref = infer(src, x)
        result["held_out"] = {"images": len(x)}
        for name in ("deploykit.int8.onnx", "nncf.int8.onnx"):
            result["held_out"][name] = metrics(ref, infer(args.out / name, x))
            print(name, result["held_out"][name], flush=True)
    print(f"median ratio deploykit / NNCF over {args.rounds} round(s): {result['median_ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
