"""Calibration: pick the images, run the FP32 graph over them, and turn what it saw into ranges.

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
import math
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from deploykit.reporter import SILENT, Reporter
from deploykit.timings import Timings
from deploykit.data import ImageSet, resolve_images
from deploykit.errors import InputError
from deploykit.files import read_json, sha256_file, write_json_atomic
from deploykit.preprocess import Preprocess, open_image

DEFAULT_CALIB_DIR = Path("calib")
DEFAULT_CALIB_SIZE = 512
DEFAULT_MIN_CALIB = 32
MAX_CHUNK = 16  # images per ONNX Runtime run when collecting stats: every tensor of a chunk is held at once
NUM_BINS = 2048  # as TensorRT's calibrator
NUM_QUANT_BINS = 128  # int8 magnitudes 0..127
PERCENTILE = 99.99
# values per image a tensor's histogram reads (min/max read them all): ResNet-50's largest tensors hold 800k, and
# a 2048-bin histogram of 128k evenly strided values has the same shape (issue 11: ranges compared in
# docs/precision.md); the histogram was a third of ResNet-50's calibration time
HIST_SAMPLE = 1 << 17
SMALL_PIECE = 1 << 15  # pieces below this many values are concatenated first: per-call overhead dominates them
# 9: no histogram (amax = observed) for tensors a method cannot clip (mse: the CPU graph's own); 7: histograms of
# strided samples; 6: the drift part kept apart, shifts on the folded Q/DQ path; 5: drift-corrected last layers;
# 4: graph-bounded ranges, mse, bias shifts; 3: histograms pooled per 16 images
CACHE_FORMAT = "deploykit-calib/9"
SHIFT_FIELDS = ("bias", "drift", "bias_cpu", "drift_cpu")  # bias shifts in the cache: TensorRT graph, CPU graph


class CalibMethod(str, Enum):
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"
    mse = "mse"

    @classmethod
    def default(cls) -> CalibMethod:
        return DEFAULT_METHOD


DEFAULT_METHOD = CalibMethod.mse  # issue 11: measured against entropy/minmax/percentile in docs/precision.md


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


# -- statistics --------------------------------------------------------------------------------------------
@dataclass
class TensorStats:
    """Running min/max of a tensor and (optionally) a histogram of ``|x|`` over ``[0, edge]``."""

    lo: float = float("inf")
    hi: float = float("-inf")
    hist: np.ndarray | None = None
    edge: float = 0.0
    exact: bool = False  # graph inputs: pixels are bounded by preprocessing, clipping them only loses content

    @property
    def amax(self) -> float:
        return max(abs(self.lo), abs(self.hi)) if np.isfinite(self.lo) else 0.0

    def update(self, x: np.ndarray | Sequence[np.ndarray], histogram: bool) -> None:
        """Fold ``x`` into the running min/max and histogram: one array, or the pieces of a chunk (an image each,
        or a dynamic-batch graph's run), read in place rather than copied into one. Min/max read every value; the
        histogram reads at most ``HIST_SAMPLE`` evenly strided values per image of a piece."""
        pieces = [p for p in ([x] if isinstance(x, np.ndarray) else x) if p.size]
        if not pieces:
            return
        torch = _torch()
        if torch is None:
            return self._update_numpy(pieces[0] if len(pieces) == 1 else np.concatenate([p.ravel() for p in pieces]),
                                      histogram)
        values = [torch.from_numpy(np.ascontiguousarray(p, np.float32)) for p in pieces]
        images = [p.shape[0] if p.ndim > 1 else 1 for p in pieces]
        if len(values) > 1 and max(v.numel() for v in values) < SMALL_PIECE:  # one call, not one per image
            values, images = [torch.cat([v.reshape(-1) for v in values])], [sum(images)]
        bounds = [torch.aminmax(v) for v in values]
        lo, hi = min(float(b.min) for b in bounds), max(float(b.max) for b in bounds)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # rare: NaN -> 0, +-inf -> the finite extremes, as NumPy's path
            finite = [v[torch.isfinite(v)] for v in values]
            finite = [f for f in finite if f.numel()]
            lo = min((float(f.min()) for f in finite), default=0.0)
            hi = max((float(f.max()) for f in finite), default=0.0)
            values = [torch.nan_to_num(v, nan=0.0, posinf=hi, neginf=lo) for v in values]
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if histogram:
            self._grow(max(abs(lo), abs(hi)))
            for v, n in zip(values, images):
                v = _sample(v.reshape(-1), HIST_SAMPLE * n)
                # |x| = x when nothing is negative (ReLU outputs): skips a pass over the values
                self.hist += torch.histc(v if lo >= 0 else v.abs(), NUM_BINS, 0.0, float(self.edge)).numpy().astype(
                    np.int64)

    def fold(self, lo: float, hi: float, samples: Sequence[np.ndarray], histogram: bool) -> None:
        """Fold in a chunk whose min and max the graph computed (``lo``, ``hi``) and, with ``histogram``, the
        values its histogram reads (``samples``: what :func:`_stats_model` hands out)."""
        if not (np.isfinite(lo) and np.isfinite(hi)):  # rare: take the finite extremes of what was sampled
            finite = [p[np.isfinite(p)] for p in samples]
            finite = [f for f in finite if f.size]
            lo = min((float(f.min()) for f in finite), default=0.0)
            hi = max((float(f.max()) for f in finite), default=0.0)
            samples = [np.nan_to_num(p, nan=0.0, posinf=hi, neginf=lo) for p in samples]
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        samples = [p for p in samples if p.size]
        if not histogram or not samples:
            return
        self._grow(max(abs(lo), abs(hi)))
        flat = samples[0].reshape(-1) if len(samples) == 1 else np.concatenate([p.reshape(-1) for p in samples])
        self.hist += _abs_histogram(flat, self.edge, signed=lo < 0)

    def _update_numpy(self, x: np.ndarray, histogram: bool) -> None:
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = x[np.isfinite(x)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            x = np.nan_to_num(x, nan=0.0, posinf=hi, neginf=lo)
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if histogram:
            self._grow(max(abs(lo), abs(hi)))
            self.hist += _abs_histogram(x, self.edge)

    def _grow(self, amax: float) -> None:
        """Start the histogram, or double its range until it covers ``amax`` (merging neighbour bins keeps the
        counts exact)."""
        if self.hist is None:
            self.hist = np.zeros(NUM_BINS, np.int64)
            self.edge = amax if amax > 0 else 1.0
        while amax > self.edge:
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(NUM_BINS // 2, np.int64)])
            self.edge *= 2

    def threshold(self, method: CalibMethod, bounded: bool = False) -> float:
        """The ``|x|`` range the method keeps (``bounded``: the graph bounds the tensor, keep what was seen)."""
        if method is CalibMethod.minmax or self.exact or bounded or self.hist is None or self.hist.sum() == 0:
            return self.amax
        if method is CalibMethod.mse:
            from deploykit.precision.ranges import mse_threshold

            return mse_threshold(self.hist, self.edge, self.amax)
        width = self.edge / NUM_BINS
        if method is CalibMethod.percentile:
            cdf = np.cumsum(self.hist) / self.hist.sum()
            idx = int(np.searchsorted(cdf, PERCENTILE / 100.0))
            return min(self.amax, (idx + 1) * width)
        return min(self.amax, entropy_threshold(self.hist) * width)

    def to_json(self, method: CalibMethod, bounded: bool = False) -> dict:
        out = {"min": self.lo if np.isfinite(self.lo) else 0.0, "max": self.hi if np.isfinite(self.hi) else 0.0,
               "amax": self.threshold(method, bounded)}
        if method is CalibMethod.mse:
            # ORT's CPU graph: asymmetric uint8, 255 levels over [min, max] (twice to four times the resolution of
            # symmetric int8 on the same tensor). Clipping buys little there and costs the tails: measured on
            # held-out crops (docs/precision.md) the CPU graph keeps the observed range.
            out["amax_u8"] = self.amax
        return out


def _sample(values, cap: int):
    """Every k-th of ``values`` (a flat tensor), k the least prime that leaves at most ``cap`` of them: a prime
    stride is coprime to the channel and spatial sizes, so the sample walks through every channel and position
    instead of striping one column."""
    if values.numel() <= cap:
        return values
    return values[::_stride(values.numel(), cap)]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _abs_histogram(x: np.ndarray, edge: float, signed: bool = True) -> np.ndarray:
    """The ``NUM_BINS``-bin histogram of ``|x|`` over ``[0, edge]`` (``signed`` False: nothing in ``x`` is
    negative, so ``|x| = x`` and the pass that takes it is skipped)."""
    torch = _torch()
    if torch is None:  # NumPy is ~5x slower but exact too
        idx = np.minimum((np.abs(x) * (NUM_BINS / edge)).astype(np.int64), NUM_BINS - 1)
        return np.bincount(idx.ravel(), minlength=NUM_BINS)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.histc(t.abs() if signed else t, NUM_BINS, 0.0, float(edge)).numpy().astype(np.int64)


def entropy_threshold(hist: np.ndarray, num_quant: int = NUM_QUANT_BINS) -> float:
    """TensorRT's KL-divergence search on a histogram of ``|x|``; returns the threshold in bins.

    For each candidate cut ``i`` the reference ``p`` is the first ``i`` bins with every count beyond folded
    into the last one, ``q`` is ``p`` squeezed into ``num_quant`` levels and spread back over the non-empty
    bins; the cut with the smallest KL(p || q) wins.
    """
    hist = hist.astype(np.float64)
    if hist.size > 1:  # as pytorch-quantization does: the zero spike (ReLU) must not drive the search
        hist[0] = hist[1]
    nonzero_last = int(np.nonzero(hist)[0][-1]) + 1 if hist.any() else num_quant
    stop = max(num_quant, nonzero_last)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best_i, best_kl = stop, np.inf
    for i in range(num_quant, stop + 1):
        p = hist[:i].copy()
        p[-1] += tail[i]
        if p.sum() == 0:
            continue
        # q: merge i bins into num_quant levels (the last takes the remainder), then spread over non-empty bins
        edges = (np.arange(num_quant + 1) * i) // num_quant
        sums = np.add.reduceat(hist[:i], edges[:-1])
        nz = (hist[:i] != 0)
        counts = np.add.reduceat(nz.astype(np.float64), edges[:-1])
        level = np.repeat(np.arange(num_quant), np.diff(edges))
        q = np.where(nz, (sums / np.maximum(counts, 1))[level], 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        pn, qn = p / p_sum, q / q_sum
        mask = pn > 0
        # bins where p > 0 but q == 0 get a small epsilon, as TensorRT's smoothing does
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i + 0.5


# -- running the graph -------------------------------------------------------------------------------------
def _stride(n: int, cap: int) -> int:
    """The least prime ``k`` with ``n / k <= cap`` (see :func:`_sample`)."""
    k = -(-n // cap)
    while k > 1 and any(k % d == 0 for d in range(2, int(k ** 0.5) + 1)):
        k += 1
    return k


def _stats_model(model, tensors: Sequence[str], histogram: bool | Collection[str], shapes=None):
    """``model`` plus, per tensor, its min and max (ReduceMin/ReduceMax in the graph: scalars) and, for the tensors
    ``histogram`` names (True: all), what its histogram reads: each image's strided sample (``[N, m]``, the
    values :func:`_sample` picks) or the whole tensor when it is small or its shape unknown. Only these leave ONNX
    Runtime, which then reuses the activations' memory instead of copying every one out (ResNet-50's CPU tensor
    set: 106 MB per image -> 48 MB). ``shapes``: the graph whose shapes say how many values an image has in each
    tensor (the fixed-batch original of a freed copy, where a freed Reshape hides the batch); default ``model``.
    Returns the model and, per tensor, the names of its (min, max, sample or None) outputs."""
    import onnx
    from onnx import helper, numpy_helper

    from deploykit.precision.graph import infer_shapes

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    shapes = model if shapes is None else shapes
    batch = shapes.graph.input[0].type.tensor_type.shape.dim[0] if shapes.graph.input and \
        shapes.graph.input[0].type.tensor_type.shape.dim else None
    per_image: dict[str, int] = {}
    wanted = set(tensors) if histogram is True else set(histogram or ())
    if wanted:
        inferred = infer_shapes(shapes).graph
        for value in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
            dims = value.type.tensor_type.shape.dim
            if len(dims) >= 2 and all(d.HasField("dim_value") for d in dims[1:]) and batch is not None and \
                    (dims[0].dim_param == batch.dim_param if batch.dim_param else dims[0].dim_value == batch.dim_value):
                per_image[value.name] = int(np.prod([d.dim_value for d in dims[1:]]))
    existing = {o.name for o in graph.output}
    names = []
    for i, tensor in enumerate(tensors):
        lo, hi = f"__dk_stats_{i}_min", f"__dk_stats_{i}_max"
        graph.node.extend([helper.make_node("ReduceMin", [tensor], [lo], keepdims=0, name=lo),
                           helper.make_node("ReduceMax", [tensor], [hi], keepdims=0, name=hi)])
        sample = None
        if tensor in wanted:
            n = per_image.get(tensor)
            sample = tensor
            if n is not None and n > HIST_SAMPLE:
                sample, prefix = f"__dk_stats_{i}_sample", f"__dk_stats_{i}"
                graph.initializer.extend([
                    numpy_helper.from_array(np.array([-1, n], np.int64), f"{prefix}_shape"),
                    numpy_helper.from_array(np.array([0], np.int64), f"{prefix}_start"),
                    numpy_helper.from_array(np.array([n], np.int64), f"{prefix}_end"),
                    numpy_helper.from_array(np.array([1], np.int64), f"{prefix}_axis"),
                    numpy_helper.from_array(np.array([_stride(n, HIST_SAMPLE)], np.int64), f"{prefix}_step")])
                graph.node.extend([
                    helper.make_node("Reshape", [tensor, f"{prefix}_shape"], [f"{prefix}_flat"],
                                     name=f"{prefix}_flat"),
                    helper.make_node("Slice", [f"{prefix}_flat", f"{prefix}_start", f"{prefix}_end",
                                               f"{prefix}_axis", f"{prefix}_step"], [sample], name=sample)])
        for name in (lo, hi, sample):
            if name is not None and name not in existing:
                graph.output.append(helper.make_empty_tensor_value_info(name))
                existing.add(name)
        names.append((lo, hi, sample))
    return out, names


def _session_with_outputs(model, tensors: Sequence[str] = ()):
    """An ONNX Runtime session of ``model`` (a ModelProto, or a path) with ``tensors`` added as outputs."""
    import onnx
    import onnxruntime as ort

    from deploykit.precision.graph import ort_providers

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    existing = {o.name for o in model.graph.output}
    missing = [name for name in tensors if name not in existing]
    if missing:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in missing)
        model = copy
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # the graph as it is: ORT's fusions run ResNet-50's pass ~15% faster but change the tensors by ~1e-6, and that
    # moves MSE ranges on flat error curves (digits MobileNetV2: held-out logit MSE +4% from that alone), so the
    # ranges would follow ORT's fusions
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=ort_providers())


class _StatsPass:
    """Runs the statistics graph of :func:`_stats_model` chunk by chunk: on a free batch dimension (the graph's
    own, or :func:`~deploykit.precision.graph.free_batch`'s, checked on the first chunk against single-image
    runs) ``max_chunk`` images a run, else the graph's fixed batch."""

    def __init__(self, model, tensors: Sequence[str], histogram: bool | Collection[str], max_chunk: int) -> None:
        from deploykit.precision.graph import free_batch

        self.model, self.tensors, self.histogram, self.max_chunk = model, list(tensors), histogram, max_chunk
        self.outputs = [o.name for o in model.graph.output]
        freed = free_batch(model)
        self.unchecked = freed is not None
        self._open(freed if freed is not None else model)

    def _open(self, model) -> None:
        stats_model, self.names = _stats_model(model, self.tensors, self.histogram, shapes=self.model)
        self.session = _session_with_outputs(stats_model)
        self.input = self.session.get_inputs()[0]
        self.fixed = self.input.shape[0] if isinstance(self.input.shape[0], int) else None
        self.fetch = [n for triple in self.names for n in triple if n is not None]
        self.fetch += [o for o in self.outputs if o not in self.fetch]

    def chunks(self, batch: np.ndarray):
        """``(outputs by name, real images)`` per run over ``batch``."""
        step = self.fixed or max(1, min(len(batch), self.max_chunk))
        for start in range(0, len(batch), step):
            chunk = np.ascontiguousarray(batch[start:start + step], np.float32)
            real = chunk.shape[0]
            if self.fixed and real < self.fixed:  # pad with copies of the last image (they move no min/max)
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.fixed - real, axis=0)])
            if self.unchecked and real > 1:
                out = self._checked(chunk)
                if out is None:  # the batch is baked into the graph somewhere: one image at a time after all
                    self.unchecked = False
                    self._open(self.model)
                    yield from self.chunks(batch[start:])
                    return
            else:
                out = dict(zip(self.fetch, self.session.run(self.fetch, {self.input.name: chunk})))
            yield out, real

    def _checked(self, chunk: np.ndarray) -> dict | None:
        """The first batched run, when the graph's outputs for its first and last image are those of single-image
        runs; None when they are not (or the batched run fails)."""
        self.unchecked = False
        try:
            out = dict(zip(self.fetch, self.session.run(self.fetch, {self.input.name: chunk})))
            for i in (0, len(chunk) - 1):
                alone = self.session.run(self.outputs, {self.input.name: chunk[i:i + 1]})
                for name, value in zip(self.outputs, alone):
                    scale = 1 + np.abs(value).max()
                    if out[name].shape[1:] != value.shape[1:] or \
                            not np.allclose(out[name][i], value[0], rtol=1e-4, atol=1e-5 * scale):
                        return None
        except Exception:  # ORT's own exception types: a shape baked into the graph
            return None
        return out


def collect_stats(model_path: Path, tensors: Sequence[str], batches: Iterable[np.ndarray], *,
                  histogram: bool | Collection[str], progress: Callable[[int], None] | None = None,
                  max_chunk: int = MAX_CHUNK) -> dict[str, TensorStats]:
    """Run the FP32 graph over ``batches`` and gather :class:`TensorStats` for ``tensors``.

    The graph reduces each tensor to its min and max itself and hands out only the strided sample its histogram
    reads (:func:`_stats_model`; ``histogram``: the tensors that get one, True for all). At most ``max_chunk``
    images run at a time (on a fixed-batch graph, its batch: the outputs are then pooled up to ``max_chunk``
    images), and each chunk is folded into the running statistics
    at once (one histogram update per tensor per chunk: per image, the update overhead dominated calibration).
    """
    import onnx

    tensors = list(dict.fromkeys(tensors))
    model = onnx.load(str(model_path))
    graph_inputs = {i.name for i in model.graph.input}
    stats = {name: TensorStats(exact=name in graph_inputs) for name in tensors}
    runner = _StatsPass(model, tensors, histogram, max_chunk)
    pending: list[list] = [[] for _ in tensors]
    pooled = 0

    def reduce() -> None:
        for name, parts in zip(tensors, pending):
            if parts:
                lo = min(p[0] for p in parts)
                hi = max(p[1] for p in parts)
                samples = [p[2] for p in parts if p[2] is not None]
                stats[name].fold(lo, hi, samples, bool(samples))
                parts.clear()

    for batch in batches:
        for out, real in runner.chunks(batch):
            for parts, (lo, hi, sample) in zip(pending, runner.names):
                value = None if sample is None else out[sample]
                if value is not None and runner.fixed and real < runner.fixed:
                    value = value[:real]
                parts.append((float(out[lo]), float(out[hi]), value))
            pooled += real
            if pooled >= max_chunk:
                reduce()
                pooled = 0
        if progress:
            progress(len(batch))
    reduce()
    return stats


def image_batches(images: ImageSet, preprocess: Preprocess, batch: int = 32) -> Iterable[np.ndarray]:
    for start in range(0, len(images), batch):
        yield preprocess.batch(images.paths[start:start + batch])


# -- the cache ---------------------------------------------------------------------------------------------
@dataclass
class Ranges:
    """Calibrated ranges of named tensors: ``{"min", "max", "amax"}`` per tensor."""

    method: CalibMethod
    tensors: dict[str, dict[str, float]]
    n_images: int
    key: str
    cached: bool = False
    path: Path | None = None
    extra: dict = field(default_factory=dict)
    bias: dict[str, np.ndarray] | None = None  # node name -> bias shift (bias_correction.py), None: not measured
    drift: dict[str, np.ndarray] = field(default_factory=dict)  # the part of ``bias`` from drift correction
    bias_cpu: dict[str, np.ndarray] | None = None  # the same, measured on ONNX Runtime's CPU graph (--int8-for cpu)
    drift_cpu: dict[str, np.ndarray] = field(default_factory=dict)

    def amax(self, name: str) -> float:
        return float(self.tensors[name]["amax"])

    def bias_for(self, excluded=(), *, cpu: bool = False) -> dict[str, np.ndarray] | None:
        """The bias shifts of a graph with the ``excluded`` layers out of INT8 (``cpu``: of ``model.int8-cpu.onnx``,
        measured on that graph; the TensorRT graph's where they were not). The drift correction of the last
        layers is fitted to the noise of the all-INT8 graph upstream of them; with any layer out of INT8 that
        noise is not what it was, so such a graph (a sensitivity probe, a budget's choice) carries the local
        shifts only -- the same graph that was measured is the one that ships."""
        bias, drift = (self.bias_cpu, self.drift_cpu) if cpu and self.bias_cpu is not None else (self.bias, self.drift)
        if bias is None or not excluded or not drift:
            return bias
        return {k: (v - drift[k]).astype(np.float32) if k in drift else v for k, v in bias.items()}


def cache_path(folder: Path, method: CalibMethod, key: str) -> Path:
    return Path(folder) / f"calib-{method.value}-{key[:16]}.json"


def cache_key(model_sha: str, data: str, method: CalibMethod, tensors: Sequence[str],
              bias_correction: bool = True, cpu: bool = False) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{model_sha}|{data}|{method.value}|bc={bias_correction}|cpu={cpu}"
                            .encode())
    digest.update("|".join(sorted(tensors)).encode())
    return digest.hexdigest()


def load_cached(folder: Path, method: CalibMethod, key: str, tensors: Sequence[str] | None = None) -> Ranges | None:
    path = cache_path(folder, method, key)
    if not path.is_file():
        return None
    try:
        data = read_json(path, "calibration cache")
    except InputError:
        return None  # a damaged cache is a miss: the ranges are measured again and the file rewritten
    if not _valid_cache(data, key, tensors):
        return None
    def shifts(name: str) -> dict[str, np.ndarray] | None:
        stored = data.get(name)
        return None if stored is None else {k: np.asarray(v, np.float32) for k, v in stored.items()}

    return Ranges(method, data["tensors"], int(data["n_images"]), key, cached=True, path=path,
                  bias=shifts("bias"), drift=shifts("drift") or {}, bias_cpu=shifts("bias_cpu"),
                  drift_cpu=shifts("drift_cpu") or {})


def _valid_cache(data: object, key: str, tensors: Sequence[str] | None) -> bool:
    """A cache is used only when every field is what ``save_cache`` writes: finite ranges for exactly the tensors
    asked for. Anything else (hand-edited, truncated, from another version) is a miss."""
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("key") != key:
        return False
    n, ranges = data.get("n_images"), data.get("tensors")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or not isinstance(ranges, dict):
        return False
    if tensors is not None and set(ranges) != set(tensors):
        return False
    for entry in ranges.values():
        if not isinstance(entry, dict):
            return False
        values = [entry.get(k) for k in ("min", "max", "amax")]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            return False
        if values[2] < 0:
            return False
    for name in SHIFT_FIELDS:
        shifts = data.get(name)
        if shifts is None:
            continue
        if not isinstance(shifts, dict):
            return False
        for shift in shifts.values():
            if not isinstance(shift, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      and math.isfinite(v) for v in shift):
                return False
    for drift_name, bias_name in (("drift", "bias"), ("drift_cpu", "bias_cpu")):  # drift is a part of a bias
        drift, bias = data.get(drift_name) or {}, data.get(bias_name) or {}
        if not all(k in bias and len(bias[k]) == len(v) for k, v in drift.items()):
            return False
    return True


def save_cache(folder: Path, ranges: Ranges) -> Path:
    path = cache_path(folder, ranges.method, ranges.key)
    data = {"format": CACHE_FORMAT, "key": ranges.key, "method": ranges.method.value,
            "n_images": ranges.n_images, "tensors": ranges.tensors}
    for bias, drift, suffix in ((ranges.bias, ranges.drift, ""), (ranges.bias_cpu, ranges.drift_cpu, "_cpu")):
        if bias is not None:
            data[f"bias{suffix}"] = {k: [float(v) for v in np.ravel(s)] for k, s in bias.items()}
            data[f"drift{suffix}"] = {k: [float(v) for v in np.ravel(s)] for k, s in drift.items()}
    write_json_atomic(path, data)
    ranges.path = path
    return path


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
        with reporter.progress(f"calibrating ({method.value}, {len(images)} images)", len(images)) as task:
            stats = collect_stats(model_path, tensors, batches, histogram=_clipped(model, tensors, method, bounded),
                                  progress=task.advance)
        ranges = Ranges(method, {n: s.to_json(method, n in bounded) for n, s in stats.items()}, len(images), key)
    if bias_correction:
        with timings.stage("bias_correction"):
            _correct_biases(model_path, ranges, images, preprocess, reporter, bias_images, cpu)
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
                    bias_images: int | None, cpu: bool) -> None:
    """``ranges.bias`` (and with ``cpu`` ``ranges.bias_cpu``): see :func:`calibrate`."""
    from deploykit.precision.bias_correction import DEFAULT_IMAGES, DRIFT_ROUNDS

    n = min(len(images), bias_images or DEFAULT_IMAGES)
    paths = spread(images.paths, n)
    amax = {name: r["amax"] for name, r in ranges.tensors.items()}
    subset = (preprocess.batch(paths[i:i + MAX_CHUNK]) for i in range(0, n, MAX_CHUNK))
    graphs = "TensorRT and CPU graphs" if cpu else "TensorRT graph"
    with reporter.progress(f"bias correction ({graphs}, {n} images, {DRIFT_ROUNDS} drift rounds)", n) as task:
        subset = list(_counted(subset, task.advance))
        ranges.bias, ranges.drift = _shifts(model_path, amax, subset)
        if cpu:
            ranges.bias_cpu, ranges.drift_cpu = _shifts(model_path, amax, subset, cpu_ranges=ranges.tensors)


def _shifts(model_path: Path, amax: dict[str, float], images: list[np.ndarray], *, cpu_ranges=None):
    """Bias shifts (local, then drift correction of the last layers) and their drift part."""
    from deploykit.precision.bias_correction import DRIFT_ROUNDS, measure_shifts

    local = measure_shifts(model_path, amax, images, mode="local", cpu_ranges=cpu_ranges)
    bias = measure_shifts(model_path, amax, images, mode="drift", rounds=DRIFT_ROUNDS, shifts=local,
                          cpu_ranges=cpu_ranges)
    drift = {k: (v - local.get(k, 0.0)).astype(np.float32) for k, v in bias.items()
             if k not in local or np.any(v != local[k])}
    return bias, drift


def spread(paths: Sequence[Path], n: int) -> list[Path]:
    """``n`` of ``paths`` evenly spaced: a sample is in path order, so an ImageFolder's first ``n`` would be its
    first classes."""
    if n >= len(paths):
        return list(paths)
    return [paths[int(i * len(paths) / n)] for i in range(n)]


def _counted(batches: Iterable[np.ndarray], advance: Callable[[int], None]) -> Iterable[np.ndarray]:
    for batch in batches:
        yield batch
        advance(len(batch))
