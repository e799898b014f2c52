"""What the benchmark scripts share: images, small trained models, ONNX Runtime runs and their comparison.

Every script in benchmarks/ is run as ``python benchmarks/<script>.py`` (Python puts the script's folder first on
``sys.path``), so ``from common import ...`` needs no path edits. Heavy packages are imported inside functions.

* photos and crops: the colour photos scikit-image and scikit-learn ship (no download), seeded random crops;
* digits models: deploykit's LeNet / ResNet-18 trained on scikit-learn's digits with deploykit's ``fit``;
* ONNX Runtime: a plain CPU session, batched inference, agreement / cosine / MSE against FP32 logits;
* INT8 recipes: one model's calibration statistics and the ranges a recipe takes from them;
* accuracy budget: the search/confirmation draws both budget benchmarks replay.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

# -- photos and crops ------------------------------------------------------------------------------------------

COLOUR = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png", "color.png")
# photos the INT8 benchmarks' calibration crops never see (their evaluation crops do)
HELD_OUT = ("astronaut.png", "motorcycle_right.png", "coffee.png", "china.jpg", "flower.jpg")


def photos() -> list[Image.Image]:
    """scikit-image's colour photos (:data:`COLOUR`)."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [Image.open(root / name).convert("RGB") for name in COLOUR if (root / name).is_file()]


def named_photos(held_out: bool) -> dict[str, Image.Image]:
    """scikit-image's colour photos and scikit-learn's two, by file name; without :data:`HELD_OUT` unless
    ``held_out``."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    root = Path(skimage.data.__file__).parent
    out = {n: Image.open(root / n).convert("RGB") for n in COLOUR if (root / n).is_file()}
    sk = load_sample_images()
    for name, arr in zip(sk.filenames, sk.images):
        out[Path(name).name] = Image.fromarray(arr).convert("RGB")
    return {k: v for k, v in out.items() if held_out or k not in HELD_OUT}


def random_crops(images: list[Image.Image], n: int, size: int, seed: int):
    """``n`` seeded random square crops (35-100% of the shorter side, half of them mirrored) resized to ``size``,
    cycling through ``images``: yields ``(i, index of the photo, crop)``."""
    rng = random.Random(seed)
    for i in range(n):
        k = i % len(images)
        w, h = images[k].size
        side = int(min(w, h) * rng.uniform(0.35, 1.0))
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
        crop = images[k].crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield i, k, crop


def write_crops(out: Path, n: int, size: int, seed: int = 0, quality: int = 85) -> list[Path]:
    """``n`` crops of :func:`photos` as JPEGs ``crop_NNNN.jpg`` in ``out`` (the repository's ./calib is 40 at 160)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, _, crop in random_crops(photos(), n, size, seed):
        path = out / f"crop_{i:04d}.jpg"
        crop.save(path, quality=quality)
        paths.append(path)
    return paths


def write_named_crops(out: Path, n: int, size: int, seed: int, held_out: bool) -> list[Path]:
    """``n`` crops of :func:`named_photos` as ``crop_NNNN_<photo>.jpg`` in ``out``."""
    images = list(named_photos(held_out).items())
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, k, crop in random_crops([img for _, img in images], n, size, seed):
        path = out / f"crop_{i:04d}_{Path(images[k][0]).stem}.jpg"
        crop.save(path, quality=85)
        paths.append(path)
    return paths


def int8_crops(root: Path, n_calib: int = 200, n_eval: int = 300) -> tuple[Path, Path]:
    """The INT8 benchmarks' calibration and held-out evaluation crops under ``root`` (written once): calibration
    crops (seed 0) of the photos outside :data:`HELD_OUT`; evaluation crops (seed 1, another size) of all 12, so
    5 photos are never seen by calibration and the other 7 are seen from other views."""
    calib, evals = root / f"calib{n_calib}", root / f"eval{n_eval}"
    if not calib.is_dir():
        write_named_crops(calib, n_calib, 256, seed=0, held_out=False)
    if not evals.is_dir():
        write_named_crops(evals, n_eval, 288, seed=1, held_out=True)
    return calib, evals


# -- models trained on digits ----------------------------------------------------------------------------------

DIGITS_MODELS = {"lenet": {"arch": "lenet", "epochs": 15, "lr": 5e-3, "batch_size": 32},
                 "resnet18": {"arch": "resnet18", "epochs": 6, "lr": 1e-3, "batch_size": 64, "img_size": 32}}


def train(out: Path, name: str) -> Path:
    """``best.pth`` of :data:`DIGITS_MODELS` ``[name]`` trained with deploykit's ``fit`` (cached in ``out``)."""
    from deploykit.runners.base import Device
    from deploykit.train import TrainConfig, fit

    best = out / f"train-{name}" / "best.pth"
    if not best.is_file():
        result = fit(TrainConfig(data="digits", seed=0, device=Device.cpu, out=best.parent, **DIGITS_MODELS[name]))
        print(f"trained {name}: val acc {result.best_val_acc:.2f}% in {result.seconds:.0f} s", file=sys.stderr)
    return best


# -- ONNX Runtime runs and their comparison ----------------------------------------------------------------------

def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def session(path: Path):
    """A plain ONNX Runtime CPU session (``OMP_NUM_THREADS`` threads, default 2): ORT as a user runs it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def infer(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    """The graph's float64 logits on ``x`` through :func:`session`, in batches (a fixed batch is padded)."""
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
    """Top-1 agreement overall and on confident images (FP32 max prob > 0.5), logit cosine mean/min, MSE."""
    conf = softmax(ref).max(1) > 0.5
    agree = ref.argmax(1) == out.argmax(1)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1) + 1e-12)
    return {"agree": round(float(agree.mean()), 4), "agree_conf": round(float(agree[conf].mean()), 4),
            "n_conf": int(conf.sum()), "cos_mean": round(float(cos.mean()), 5), "cos_min": round(float(cos.min()), 4),
            "mse": float(((ref - out) ** 2).mean())}


def closeness(path: Path, batch: np.ndarray, reference: np.ndarray, labels: np.ndarray, threads: int) -> dict:
    """The graph at ``path`` run by deploykit's ONNX Runtime runner against FP32 ``reference`` logits: top-1
    agreement, logit cosine min/mean, accuracy on ``labels``."""
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    out = OnnxRuntimeRunner(path, threads=threads).infer(batch).astype(np.float64)
    ref = reference.astype(np.float64)
    cos = (ref * out).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1), 1e-30)
    return {"top1_agreement": round(float((out.argmax(1) == ref.argmax(1)).mean()), 4),
            "cos_min": round(float(np.nan_to_num(cos).min()), 6),
            "cos_mean": round(float(np.nan_to_num(cos).mean()), 6),
            "accuracy": round(100 * float((out.argmax(1) == labels).mean()), 2)}


# -- INT8 recipes ----------------------------------------------------------------------------------------------

class Model:
    """One export folder's FP32 graph, its TensorRT plan, the calibration statistics of every tensor either
    quantizer may ask for (pickled beside it) and the FP32 logits on the evaluation crops (cached)."""

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
    """Per tensor ``{"min", "max", "amax"}`` as a recipe's parts set them (a range method, ``b``, ``cpumax``)."""
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


# -- accuracy budget -------------------------------------------------------------------------------------------

def draw_halves(reference: np.ndarray, trials: int, images: int, stratified: bool):
    """Per trial, a seeded draw of ``images`` of the images split as the export splits them (random, or stratified
    by ``reference``'s FP32 margins): the search and confirmation halves as indices into ``reference``."""
    from deploykit.precision.sensitivity import budget_split

    for trial in range(trials):
        pick = np.sort(np.random.default_rng(1000 + trial).choice(len(reference), images, replace=False))
        search, confirm = budget_split(len(pick), trial, reference[pick] if stratified else None)
        yield pick[search], pick[confirm]


def old_rule(s, budget: float) -> bool:
    """The budget rule before the predicted-count rule: counted and expected loss plus one standard error within
    the budget."""
    return s.loss <= budget and s.expected + s.expected_se <= budget


def export_cli(args: list[str], threads: int, expect: Path) -> Path:
    """Run the real ``deploykit export ARGS`` (a subprocess, OMP_NUM_THREADS=threads), print its output's tail and
    how long it took; exit the benchmark when ``expect`` (a file the export must write) is missing."""
    cmd = [sys.executable, "-m", "deploykit", "export", *map(str, args)]
    print("$", " ".join(cmd[1:]), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    print(proc.stdout[-3000:], proc.stderr[-1500:], f"(export took {time.perf_counter() - t:.0f} s)", flush=True)
    if not expect.is_file():
        sys.exit(f"export failed with exit code {proc.returncode}")
    return expect.parent
