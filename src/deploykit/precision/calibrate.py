"""Calibration: pick the images, run the FP32 graph over them, and turn what it saw into ranges.

This module holds the images and the order of work; the statistics pass is :mod:`.stats`, the range rules
:mod:`.ranges`, the cache :mod:`.calib_cache`, the bias shifts :mod:`.bias_correction`.

One pass of ONNX Runtime over the FP32 graph (with the tensors of interest added as outputs) feeds a
:class:`TensorStats` per tensor: exact min/max and, for the entropy and percentile methods, a histogram of
``|x|``. The ranges then come from one of three methods (:class:`CalibMethod`):

* ``entropy``    TensorRT's KL-divergence threshold (the method of its ``IInt8EntropyCalibrator2``);
* ``minmax``     the largest ``|x|`` seen;
* ``percentile`` the 99.99th percentile of ``|x|``;
* ``mse``        the threshold with the least quantization MSE on the histogram (:mod:`.ranges`).

Whatever the method, a tensor the graph bounds (a ReLU6/Clip output, a sigmoid gate, and what padding or
pooling passes on of them) keeps its observed range (:func:`.ranges.bounded_tensors`), and the quantized layers
get bias corrections measured on the calibration images (:mod:`.bias_correction`), stored with the ranges.

Ranges are cached beside the artifacts (``calib-<method>-<key>.json``) keyed by the graph, the image bytes,
the preprocessing and the method, so a re-export does not recalibrate.

Why not onnxruntime.quantization's calibrators: they collect every input and output of the selected op types
and its entropy search is a pure-Python loop (``sum()`` over NumPy arrays per candidate threshold), which
takes minutes per ResNet-50; we need a few named tensors and TensorRT's unsigned-histogram KL search.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from deploykit.data import ImageSet, resolve_images
from deploykit.errors import InputError
from deploykit.files import sha256_file
from deploykit.precision.calib_cache import Ranges, cache_key, load_cached, save_cache
from deploykit.precision.ranges import CalibMethod
# TensorStats, collect_stats and image_batches: imported from here by callers that calibrate by hand
from deploykit.precision.bias_correction import DEFAULT_IMAGES, DRIFT_ROUNDS, drift_tail, local_and_drift
from deploykit.precision.stats import MAX_CHUNK, ChannelMeans, TensorStats, collect_stats, image_batches  # noqa: F401
from deploykit.preprocess import Preprocess, open_image
from deploykit.messages import SILENT, Reporter
from deploykit.timings import Timings

DEFAULT_CALIB_DIR = Path("calib")
DEFAULT_CALIB_SIZE = 512
DEFAULT_MIN_CALIB = 32


# -- the images ----------------------------------------------------------------------------------------------
def calibration_pool(calib: Path | None, *, reporter: Reporter = SILENT) -> ImageSet:
    """Every usable image of ``--calib`` (``None``: ``./calib`` when it exists; ``digits``: its train split)."""
    if calib is None:
        if not DEFAULT_CALIB_DIR.is_dir():
            raise InputError("INT8 needs calibration images: pass --calib DIR (a folder of images like the ones "
                             "the model will see) or create ./calib")
        calib = DEFAULT_CALIB_DIR
    return resolve_images(calib, what="--calib", split="train", reporter=reporter)  # folder or digits


def calibration_images(calib: Path | None, *, size: int = DEFAULT_CALIB_SIZE, min_images: int = DEFAULT_MIN_CALIB,
                       seed: int = 0, reporter: Reporter = SILENT, pool: ImageSet | None = None) -> ImageSet:
    """The seeded sample of usable images INT8 calibrates on.

    ``calib`` None means ``./calib`` when it exists. Unreadable files are skipped with a warning; fewer than
    ``min_images`` usable images is an error. ``pool``: the images to sample from, when the caller has them (the
    export, after holding verification images out of them).
    """
    if size < 1:
        raise InputError(f"--calib-size must be >= 1, got {size}")
    if min_images < 1:
        raise InputError(f"--min-calib must be >= 1, got {min_images}")
    images = pool if pool is not None else calibration_pool(calib, reporter=reporter)
    calib = calib or DEFAULT_CALIB_DIR
    if len(images) < min_images:
        raise InputError(f"--calib {calib} has {len(images)} usable image(s); INT8 calibration needs at least "
                         f"{min_images}: add images, or lower the bar with --min-calib")
    if size < min_images:  # the sample, not the pool, is what calibrates
        raise InputError(f"--calib-size {size} would calibrate on fewer than --min-calib {min_images} images: "
                         "raise --calib-size or lower --min-calib")
    return images.sample(size, seed=seed)


def check_channels(images: ImageSet, channels: int, where: Path, *, accepted: str | None = None,
                   reporter: Reporter = SILENT) -> str | None:
    """A mostly grayscale set for a colour model. ``accepted`` (why: training converted grayscale images to
    colour, or --calib-grayscale) makes it a note returned to the caller, as the images are converted to RGB the
    way training did; otherwise it is a warning naming the flag (its ranges describe images the model may never
    see)."""
    if channels != 3:
        return None
    gray = sum(1 for p in images.paths if open_image(p).mode in {"1", "L", "LA", "I", "I;16", "F"})
    if gray * 2 <= len(images):
        return None
    what = f"{gray} of {len(images)} calibration images in {where} are grayscale"
    if accepted:
        return f"{what}: converted to RGB, as {accepted}"
    reporter.warn(f"{what} but the model takes colour input and its checkpoint does not say it was trained on "
                  "grayscale: they are converted to RGB; calibrate on colour images like the ones it will see, or "
                  "pass --calib-grayscale to say it sees grayscale ones")
    return None


def data_key(images: ImageSet, preprocess: Preprocess) -> str:
    """Hash of the image bytes (in sample order) and of how they are preprocessed."""
    digest = hashlib.sha256(json.dumps(preprocess.to_dict(), sort_keys=True).encode())
    for path in images.paths:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def calibrate(model_path: Path, tensors: Sequence[str], images: ImageSet, preprocess: Preprocess,
              method: CalibMethod, *, cache_dir: Path, reporter: Reporter = SILENT, bias_correction: bool = True,
              bias_images: int | None = None, cpu: bool = False, timings: Timings | None = None) -> Ranges:
    """Ranges for ``tensors`` of the FP32 graph, from the cache when model, images and method match.

    With ``bias_correction`` the TensorRT plan's layers also get their bias shifts (:mod:`.bias_correction`),
    measured on ``bias_images`` calibration images spread over the sample with these ranges, in ``Ranges.bias``:
    local correction of every layer, then drift correction of the last ``DRIFT_ROUNDS`` (``mode="drift"``).
    ``cpu`` (``tensors`` holds every tensor ORT's quantizer asks for): the same, measured on ONNX Runtime's CPU
    graph, in ``Ranges.bias_cpu``. ``timings`` gets the seconds of the statistics pass and of bias correction."""
    import onnx

    from deploykit.precision.ranges import bounded_tensors

    timings = timings if timings is not None else Timings()
    with timings.stage("calibration"):
        key = cache_key(sha256_file(model_path), data_key(images, preprocess), method, tensors, bias_correction,
                        cpu)
        cached = load_cached(cache_dir, method, key, tensors)
        if cached is not None:
            return cached
        batches = image_batches(images, preprocess)
        model = onnx.load(str(model_path))
        bounded = bounded_tensors(model) if method is not CalibMethod.minmax else {}
        subset = spread_indices(len(images), min(len(images), bias_images or DEFAULT_IMAGES))
        tail = drift_tail(model) if bias_correction else []
        # drift correction's FP32 targets: the tail layers' per-channel means on the bias-correction images
        means = ChannelMeans({t: axes for _, t, axes in tail}, frozenset(subset)) if tail else None
        with reporter.progress(f"calibrating ({method.value}, {len(images)} images)", len(images)) as task:
            stats = collect_stats(model_path, tensors, batches, histogram=_clipped(model, tensors, method, bounded),
                                  progress=task.advance, means=means)
        ranges = Ranges(method, {n: s.to_json(method, n in bounded) for n, s in stats.items()}, len(images), key)
    if bias_correction:
        targets = {node: means.mean(t) for node, t, _ in tail if means.mean(t) is not None}
        with timings.stage("bias_correction"):
            _correct_biases(model_path, ranges, images, preprocess, reporter, subset, cpu, targets)
    save_cache(cache_dir, ranges)
    return ranges


def _clipped(model, tensors: Sequence[str], method: CalibMethod, bounded) -> set[str]:
    """The tensors whose range ``method`` may clip, so their histogram is collected: not a graph input (kept
    exact) nor a tensor the graph bounds (:func:`.ranges.bounded_tensors`); with ``mse``, only those the TensorRT
    plan quantizes (ORT's CPU graph keeps every observed range, ``amax_u8``). Histograms were most of the
    statistics pass (ResNet-50's 123 tensors: 54 are the plan's)."""
    from deploykit.precision.int8 import plan_trt

    if method is CalibMethod.minmax:
        return set()
    inputs = {i.name for i in model.graph.input}
    keep = set(tensors) - inputs - set(bounded)
    if method is CalibMethod.mse:
        keep &= set(plan_trt(model).activation_tensors)
    return keep


def _correct_biases(model_path: Path, ranges: Ranges, images: ImageSet, preprocess: Preprocess, reporter: Reporter,
                    subset: list[int], cpu: bool, targets: dict[str, np.ndarray]) -> None:
    """``ranges.bias`` (and with ``cpu`` ``ranges.bias_cpu``), measured on the images ``subset`` (indices);
    ``targets``: drift correction's FP32 targets, from the statistics pass. See :func:`calibrate`."""
    n = len(subset)
    paths = [images.paths[i] for i in subset]
    amax = {name: r["amax"] for name, r in ranges.tensors.items()}
    subset = (preprocess.batch(paths[i:i + MAX_CHUNK]) for i in range(0, n, MAX_CHUNK))
    graphs = "TensorRT and CPU graphs" if cpu else "TensorRT graph"
    with reporter.progress(f"bias correction ({graphs}, {n} images, {DRIFT_ROUNDS} drift rounds)", n) as task:
        subset = list(_counted(subset, task.advance))
        ranges.bias, ranges.drift = local_and_drift(model_path, amax, subset, targets=targets)
        if cpu:
            ranges.bias_cpu, ranges.drift_cpu = local_and_drift(model_path, amax, subset, cpu_ranges=ranges.tensors,
                                                                targets=targets)


def spread(paths: Sequence[Path], n: int) -> list[Path]:
    """``n`` of ``paths`` evenly spaced: a sample is in path order, so an ImageFolder's first ``n`` would be its
    first classes."""
    return [paths[i] for i in spread_indices(len(paths), n)]


def spread_indices(total: int, n: int) -> list[int]:
    """The indices :func:`spread` picks."""
    if n >= total:
        return list(range(total))
    return [int(i * total / n) for i in range(n)]


def _counted(batches: Iterable[np.ndarray], advance: Callable[[int], None]) -> Iterable[np.ndarray]:
    for batch in batches:
        yield batch
        advance(len(batch))
