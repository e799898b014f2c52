#!/usr/bin/env python3
"""Classify images with a deploykit export folder on an Intel CPU with OpenVINO -- the start of an x86 edge app.

    python3 classify.py EXPORT_FOLDER IMAGE... [--model model.int8.onnx] [--precision f32|bf16] [--topk 5]
                        [--threads N] [--cache DIR]

Needs only NumPy, Pillow and OpenVINO (``pip install openvino numpy pillow``): no torch, no deploykit. The
preprocessing below is deploykit's (``deploykit/preprocess.py``) step for step, driven by the folder's
``deploykit.json``; the test suite checks the two give identical arrays.

Which file: by default the manifest's ``model.int8.onnx`` -- the symmetric Q/DQ graph deploykit writes for
TensorRT, which OpenVINO reads as is and runs with integer kernels -- else ``model.onnx``. ``model.int8-cpu.onnx``
is ONNX Runtime's graph (com.microsoft ops) and OpenVINO cannot read it.

Precision: on CPUs with native bf16 (AVX512_BF16, AMX) OpenVINO computes an FP32 model in bf16 unless told
otherwise, so ``INFERENCE_PRECISION_HINT`` is always set (``--precision``, f32 by default) and the precision the
compiled model reports is printed. ``--cache DIR`` keeps OpenVINO's compiled model there, so the next start skips
compilation (OpenVINO keys a model read from a file by its path: use a fresh folder after replacing the file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST}
DEFAULT_MODELS = ("model.int8.onnx", "model.onnx")  # the Intel deployable first


# -- preprocessing: the manifest's "preprocess" block, applied as deploykit does ------------------------------
def to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image).astype(np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if image.mode == "F" and arr.max(initial=0) <= 1.0:
            hi = 1.0
        image = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):  # transparent pixels on white
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image if image.mode == mode else image.convert(mode)


def preprocess(path: Path, pre: dict) -> np.ndarray:
    """One image -> float32 C x H x W, as ``deploykit.preprocess.Preprocess.load``."""
    channels, height, width = int(pre["channels"]), int(pre["height"]), int(pre["width"])
    image = Image.open(path)
    image.seek(0)
    image = to_mode(image, "L" if channels == 1 else "RGB")
    resample = RESAMPLE[pre.get("interpolation", "bilinear")]
    if pre.get("resize"):
        w, h = image.size
        scale = int(pre["resize"]) / min(w, h)
        new = (max(width, round(w * scale)), max(height, round(h * scale)))
        image = image.resize(new, resample)
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
    else:
        image = image.resize((width, height), resample)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = (arr - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def topk(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    z = np.exp(logits - logits.max())
    p = z / z.sum()
    order = np.argsort(-p)[:k]
    return [(int(i), float(p[i])) for i in order]


# -- OpenVINO -------------------------------------------------------------------------------------------------
def select_model(manifest: dict, name: str | None, folder: Path) -> dict:
    """The manifest entry of ``--model NAME``; without it model.int8.onnx, else model.onnx. Never another file
    than the one asked for; ONNX Runtime's CPU graph is refused with the reason."""
    onnx = [a for a in manifest["artifacts"] if a["path"].endswith(".onnx")]
    if name is None:
        entry = next((a for want in DEFAULT_MODELS for a in onnx if a["path"] == want), None)
        if entry is None:
            sys.exit(f"error: {folder}/deploykit.json lists neither {' nor '.join(DEFAULT_MODELS)}")
        return entry
    entry = next((a for a in onnx if a["path"] == name), None)
    if entry is None:
        sys.exit(f"error: {folder}/deploykit.json lists no ONNX model {name!r}; it has: "
                 f"{', '.join(a['path'] for a in onnx)}")
    if entry.get("precision") == "int8-cpu":
        sys.exit(f"error: {name} is ONNX Runtime's CPU graph, which OpenVINO cannot read; run model.int8.onnx")
    return entry


def load(folder: Path, entry: dict, precision: str, threads: int | None, cache: Path | None):
    """The compiled model, with the precision set explicitly; returns (compiled, precision it reports)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        sys.exit("error: this CPU has no native bf16; use --precision f32")
    compiled = core.compile_model(str(folder / entry["path"]), "CPU", config)
    return compiled, compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def classify(folder: Path, images: list[Path], model: str | None = None, precision: str = "f32", k: int = 5,
             threads: int | None = None, cache: Path | None = None) -> list[list[tuple[int, float]]]:
    manifest = json.loads((folder / "deploykit.json").read_text())
    entry = select_model(manifest, model, folder)
    compiled, ran = load(folder, entry, precision, threads, cache)
    shape = compiled.input(0).get_partial_shape()
    request = compiled.create_infer_request()
    names = manifest["model"].get("class_names") or []
    results = []
    for image in images:
        x = preprocess(image, manifest["preprocess"])[None]
        if not shape[0].is_dynamic and shape[0].get_length() > 1:  # a fixed-batch model: fill the batch
            x = np.repeat(x, shape[0].get_length(), axis=0)
        logits = np.asarray(request.infer({0: x})[0], dtype=np.float32)[0]
        top = topk(logits, k)
        results.append(top)
        print(f"{image}  ({entry['path']}, {entry['precision']}, OpenVINO {ran})")
        for rank, (index, prob) in enumerate(top, 1):
            print(f"{rank}. {names[index] if index < len(names) else index:<24} {prob:.4f}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="deploykit export folder (deploykit.json + ONNX)")
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--model", help="ONNX file in the folder [default: model.int8.onnx, else model.onnx]")
    parser.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                        help="OpenVINO's INFERENCE_PRECISION_HINT (for an INT8 model: the non-INT8 rest)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--threads", type=int, help="inference threads [default: OpenVINO's choice]")
    parser.add_argument("--cache", type=Path, help="folder for OpenVINO's compiled-model cache")
    args = parser.parse_args(argv)
    classify(args.folder, args.images, args.model, args.precision, args.topk, args.threads, args.cache)


if __name__ == "__main__":
    main()
