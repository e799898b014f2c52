#!/usr/bin/env python3
"""Classify an image with a deploykit TensorRT engine on a Jetson -- the starting point for an edge app.

    python3 classify.py EXPORT_FOLDER IMAGE [--engine model.fp16.engine] [--topk 5]

Needs only NumPy, Pillow, TensorRT's Python bindings (JetPack: ``apt install python3-libnvinfer``) and
cuda-python (``pip install "cuda-python>=12,<13"`` on JetPack 6): no torch, no deploykit. The preprocessing
below is deploykit's (``deploykit/preprocess.py``) step for step, driven by the folder's ``deploykit.json``;
the test suite checks the two give identical arrays.

TensorRT runtime calls follow NVIDIA's name-based API for 10.x/11.x (``deserialize_cuda_engine``,
``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); CUDA memory through ``cuda.bindings.runtime`` as in ``samples/python/common_runtime.py``.
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


# -- TensorRT -------------------------------------------------------------------------------------------------
def cuda_runtime():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart as runtime  # cuda-python 12.0 - 12.5
    return runtime


def ok(result):
    """cuda-python returns (err, *values): raise on error."""
    rt = cuda_runtime()
    if result[0] != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error {result[0]}")
    return result[1] if len(result) == 2 else result[1:]


def check_compatible(facts: dict, trt) -> None:
    """A plan only loads in the TensorRT that built it, on a GPU of the same compute capability."""
    rt = cuda_runtime()
    here = ".".join(trt.__version__.split(".")[:3])
    if ".".join(str(facts.get("tensorrt", "")).split(".")[:3]) != here:
        sys.exit(f"error: the engine was built by TensorRT {facts.get('tensorrt')}, this is {trt.__version__}: "
                 f"rebuild it here with `deploykit build FOLDER --precision {facts.get('precision')}`")
    prop = ok(rt.cudaGetDeviceProperties(0))
    cc = f"{prop.major}.{prop.minor}"
    if facts.get("compute_capability") and facts["compute_capability"] != cc:
        sys.exit(f"error: the engine was built for compute capability {facts['compute_capability']}, this GPU is "
                 f"{cc}: rebuild it here with `deploykit build FOLDER --precision {facts.get('precision')}`")


def select_engine(engines: list[dict], engine_name: str | None, folder: Path) -> dict:
    """The manifest entry of ``--engine NAME`` (the first engine without it); an unknown name is an error."""
    if engine_name is None:
        return engines[0]
    entry = next((a for a in engines if a["path"] == engine_name), None)
    if entry is None:
        sys.exit(f"error: {folder}/deploykit.json lists no engine {engine_name!r}; it has: "
                 f"{', '.join(a['path'] for a in engines)}")
    return entry


def classify(folder: Path, image: Path, engine_name: str | None, k: int) -> None:
    import tensorrt as trt

    rt = cuda_runtime()
    manifest = json.loads((folder / "deploykit.json").read_text())
    engines = [a for a in manifest["artifacts"] if "engine" in a]
    if not engines:
        sys.exit(f"error: {folder} has no engine yet: run `deploykit build {folder}` on this device")
    entry = select_engine(engines, engine_name, folder)
    check_compatible(entry["engine"], trt)

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine((folder / entry["path"]).read_bytes())
    if engine is None:  # TensorRT logs why (wrong version, another GPU, not a plan) and returns None
        sys.exit(f"error: TensorRT {trt.__version__} cannot load {entry['path']} (see its message above): "
                 f"rebuild it here with `deploykit build {folder} --precision {entry.get('precision')}`")
    context = engine.create_execution_context()
    if context is None:
        sys.exit(f"error: TensorRT could not create an execution context for {entry['path']} (GPU memory?)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    x = preprocess(image, manifest["preprocess"])[None]  # batch of 1: inside every deploykit profile
    if engine.get_tensor_shape(inp)[0] == -1:
        context.set_input_shape(inp, x.shape)
    else:
        x = np.repeat(x, engine.get_tensor_shape(inp)[0], axis=0)  # a fixed-batch engine: fill the batch
    y = np.empty(tuple(context.get_tensor_shape(out)), dtype=trt.nptype(engine.get_tensor_dtype(out)))

    stream = ok(rt.cudaStreamCreate())
    d_in, d_out = ok(rt.cudaMalloc(x.nbytes)), ok(rt.cudaMalloc(y.nbytes))
    context.set_tensor_address(inp, d_in)
    context.set_tensor_address(out, d_out)
    ok(rt.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
    context.execute_async_v3(int(stream))
    ok(rt.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
    ok(rt.cudaStreamSynchronize(stream))
    rt.cudaFree(d_in), rt.cudaFree(d_out), rt.cudaStreamDestroy(stream)

    names = manifest["model"].get("class_names") or []
    print(f"{image}  ({entry['path']}, {entry['precision']})")
    for rank, (index, prob) in enumerate(topk(y[0].astype(np.float32), k), 1):
        print(f"{rank}. {names[index] if index < len(names) else index:<24} {prob:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="deploykit export folder (deploykit.json + engine)")
    parser.add_argument("image", type=Path)
    parser.add_argument("--engine", help="engine file name in the folder [default: the first one]")
    parser.add_argument("--topk", type=int, default=5)
    args = parser.parse_args(argv)
    classify(args.folder, args.image, args.engine, args.topk)


if __name__ == "__main__":
    main()
