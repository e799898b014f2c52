"""The statistics pass: one ONNX Runtime run of the FP32 graph over the calibration images, reduced to a
:class:`TensorStats` per tensor (exact min/max and, where a range rule may clip, a histogram of ``|x|``).

The graph itself reduces each tensor to its min and max and hands out only what a histogram reads
(:func:`_stats_model`); :class:`_StatsPass` runs it in chunks of images (on a batch-1 graph, a copy with the batch
freed). The range rules that read the statistics live in :mod:`.ranges`; the cache of their results in
:mod:`.calib_cache`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.data import ImageSet
from deploykit.precision.ranges import PERCENTILE, CalibMethod, entropy_threshold
from deploykit.preprocess import Preprocess

MAX_CHUNK = 16  # images per ONNX Runtime run when collecting stats: every tensor of a chunk is held at once
NUM_BINS = 2048  # as TensorRT's calibrator
# values per image a tensor's histogram reads (min/max read them all): ResNet-50's largest tensors hold 800k, and
# a 2048-bin histogram of 128k evenly strided values has the same shape (issue 11: ranges compared in
# docs/precision.md); the histogram was a third of ResNet-50's calibration time
HIST_SAMPLE = 1 << 17
SMALL_PIECE = 1 << 15  # pieces below this many values are concatenated first: per-call overhead dominates them


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


def _stride(n: int, cap: int) -> int:
    """The least prime ``k`` with ``n / k <= cap`` (see :func:`_sample`)."""
    k = -(-n // cap)
    while k > 1 and any(k % d == 0 for d in range(2, int(k ** 0.5) + 1)):
        k += 1
    return k


def _stats_model(model, tensors: Sequence[str], histogram: bool | Collection[str], shapes=None,
                 means: dict[str, list[int]] | None = None):
    """``model`` plus, per tensor, its min and max (ReduceMin/ReduceMax in the graph: scalars) and, for the tensors
    ``histogram`` names (True: all), what its histogram reads: each image's strided sample (``[N, m]``, the
    values :func:`_sample` picks) or the whole tensor when it is small or its shape unknown. Only these leave ONNX
    Runtime, which then reuses the activations' memory instead of copying every one out (ResNet-50's CPU tensor
    set: 106 MB per image -> 48 MB). ``shapes``: the graph whose shapes say how many values an image has in each
    tensor (the fixed-batch original of a freed copy, where a freed Reshape hides the batch); default ``model``.
    ``means``: tensors (-> the axes besides the batch to reduce) whose per-image, per-channel means are also
    handed out (:class:`ChannelMeans`). Returns the model, per tensor the names of its (min, max, sample or None)
    outputs, and per ``means`` tensor the name of its output."""
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
    mean_names = {}
    for j, (tensor, axes) in enumerate((means or {}).items()):
        name = tensor
        if axes:
            name, axes_name = f"__dk_mean_{j}", f"__dk_mean_{j}_axes"
            graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
            graph.node.append(helper.make_node("ReduceMean", [tensor, axes_name], [name], keepdims=0, name=name))
        if name not in existing:
            graph.output.append(helper.make_empty_tensor_value_info(name))
            existing.add(name)
        mean_names[tensor] = name
    return out, names, mean_names


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

    def __init__(self, model, tensors: Sequence[str], histogram: bool | Collection[str], max_chunk: int,
                 means: dict[str, list[int]] | None = None) -> None:
        from deploykit.precision.graph import free_batch

        self.model, self.tensors, self.histogram, self.max_chunk = model, list(tensors), histogram, max_chunk
        self.means = means
        self.outputs = [o.name for o in model.graph.output]
        freed = free_batch(model)
        self.unchecked = freed is not None
        self._open(freed if freed is not None else model)

    def _open(self, model) -> None:
        stats_model, self.names, self.mean_names = _stats_model(model, self.tensors, self.histogram,
                                                                shapes=self.model, means=self.means)
        self.session = _session_with_outputs(stats_model)
        self.input = self.session.get_inputs()[0]
        self.fixed = self.input.shape[0] if isinstance(self.input.shape[0], int) else None
        self.fetch = [n for triple in self.names for n in triple if n is not None]
        self.fetch += [n for n in self.mean_names.values() if n not in self.fetch]
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
                  max_chunk: int = MAX_CHUNK, means: ChannelMeans | None = None) -> dict[str, TensorStats]:
    """Run the FP32 graph over ``batches`` and gather :class:`TensorStats` for ``tensors``.

    The graph reduces each tensor to its min and max itself and hands out only the strided sample its histogram
    reads (:func:`_stats_model`; ``histogram``: the tensors that get one, True for all). At most ``max_chunk``
    images run at a time (on a fixed-batch graph, its batch: the outputs are then pooled up to ``max_chunk``
    images), and each chunk is folded into the running statistics
    at once (one histogram update per tensor per chunk: per image, the update overhead dominated calibration).
    ``means``: per-channel means the same pass measures on some of the images (filled in place).
    """
    import onnx

    tensors = list(dict.fromkeys(tensors))
    model = onnx.load(str(model_path))
    graph_inputs = {i.name for i in model.graph.input}
    stats = {name: TensorStats(exact=name in graph_inputs) for name in tensors}
    runner = _StatsPass(model, tensors, histogram, max_chunk, None if means is None else means.axes)
    pending: list[list] = [[] for _ in tensors]
    pooled = seen = 0

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
            if means is not None:
                means.add({t: out[name][:real] for t, name in runner.mean_names.items()}, seen)
            pooled += real
            seen += real
            if pooled >= max_chunk:
                reduce()
                pooled = 0
        if progress:
            progress(len(batch))
    reduce()
    return stats


@dataclass
class ChannelMeans:
    """Per-channel means of some tensors over some of the images (by their place in the pass), measured by the
    statistics pass: drift correction's FP32 targets (:func:`~deploykit.precision.bias_correction.drift_tail`),
    which then need no FP32 pass of their own."""

    axes: dict[str, list[int]]  # tensor -> the axes of an image's values a channel's mean reduces ([] for [N, C])
    images: frozenset[int]
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    count: int = 0

    def add(self, per_image: dict[str, np.ndarray], first: int) -> None:
        """Fold in a run's per-image means (``[n, C]`` per tensor) of the images ``first``, ``first + 1``..."""
        n = len(next(iter(per_image.values()))) if per_image else 0
        rows = [i for i in range(n) if first + i in self.images]
        if not rows:
            return
        for tensor, values in per_image.items():
            part = values[rows].astype(np.float64).sum(axis=0)
            self.sums[tensor] = part if tensor not in self.sums else self.sums[tensor] + part
        self.count += len(rows)

    def mean(self, tensor: str) -> np.ndarray | None:
        return None if tensor not in self.sums or not self.count else self.sums[tensor] / self.count


def image_batches(images: ImageSet, preprocess: Preprocess, batch: int = 32) -> Iterable[np.ndarray]:
    for start in range(0, len(images), batch):
        yield preprocess.batch(images.paths[start:start + batch])
