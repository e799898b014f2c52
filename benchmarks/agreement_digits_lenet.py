"""INT8/FP16 agreement with FP32 on confidently classified images, for a model trained here on real data.

    python benchmarks/agreement_digits_lenet.py [--out DIR]

No ImageNet-pretrained weights can be had without a download (see docs/precision.md), so the model is
deploykit's LeNet trained on scikit-learn's digits (1400 train / 397 held-out images); calibration on 512
train images, agreement on the held-out images whose FP32 max softmax probability exceeds 0.5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from common import digits_arrays, train_lenet_adam, write_imagefolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dk-bench-agree"))
    args = parser.parse_args()
    from deploykit.pipeline import export_folder
    from deploykit.precision import CalibMethod, Int8Target, PrecisionRequest
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    args.out.mkdir(parents=True, exist_ok=True)
    images, labels = digits_arrays()
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1400], order[1400:]
    train_lenet_adam(args.out / "lenet.pt", images[train], labels[train])
    calib = args.out / "calib"
    calib.mkdir(exist_ok=True)
    for i in train[:512]:
        Image.fromarray(images[i], "L").save(calib / f"{i:04d}.png")
    write_imagefolder(args.out / "test", images[test], labels[test])
    results = {}
    for method in CalibMethod:
        req = PrecisionRequest(fp16=True, int8=True, int8_for=(Int8Target.trt, Int8Target.cpu), calib=calib,
                               calib_method=method)
        res = export_folder(args.out / "lenet.pt", out=args.out / f"export-{method.value}", precision=req,
                            data=args.out / "test")
        folder = res.folder
        from deploykit.data import scan_images

        test_set = scan_images(args.out / "test")
        x = test_set.load(res.loaded.preprocess)
        ref = OnnxRuntimeRunner(folder / "model.onnx").infer(x)
        prob = np.exp(ref - ref.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        confident = prob.max(1) > 0.5
        row = {"images": int(len(x)), "confident": int(confident.sum())}
        for name in ("model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"):
            out = OnnxRuntimeRunner(folder / name).infer(x)
            row[name] = {"agreement_all": round(float((out.argmax(1) == ref.argmax(1)).mean()), 4),
                         "agreement_confident": round(float((out[confident].argmax(1) ==
                                                            ref[confident].argmax(1)).mean()), 4),
                         **{k: round(v, 3) for k, v in res.manifest.artifact(name)["parity"]["metrics"].items()
                            if k in ("accuracy", "reference_accuracy", "accuracy_drop")}}
        results[method.value] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
