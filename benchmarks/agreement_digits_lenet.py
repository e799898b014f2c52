"""INT8/FP16 agreement with FP32 on confidently classified images, for a model trained here on real data.

    python benchmarks/agreement_digits_lenet.py [--out DIR]

No ImageNet-pretrained weights can be had without a download (see docs/precision.md), so the model is
deploykit's LeNet trained with `deploykit.train.fit` on scikit-learn's digits (the bundled train split, as
``common.train``); calibration on 512 train images, agreement on the 360 held-out (val split) images whose FP32
max softmax probability exceeds 0.5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from common import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dk-bench-agree"))
    args = parser.parse_args()
    from deploykit.data import Split, digits_split, write_imagefolder
    from deploykit.pipeline import export_folder
    from deploykit.precision import CalibMethod, Int8Target, PrecisionRequest
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = train(args.out, "lenet")
    calib = args.out / "calib"
    calib.mkdir(exist_ok=True)
    for i, image in enumerate(digits_split(Split.train).images[:512]):
        Image.fromarray(np.asarray(image), "L").save(calib / f"{i:04d}.png")
    if not (args.out / "test").is_dir():
        write_imagefolder(digits_split(Split.val), args.out / "test")
    results = {}
    for method in CalibMethod:
        req = PrecisionRequest(fp16=True, int8=True, int8_for=(Int8Target.trt, Int8Target.cpu), calib=calib,
                               calib_method=method)
        res = export_folder(ckpt, out=args.out / f"export-{method.value}", precision=req,
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
