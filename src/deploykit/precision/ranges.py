"""The range rules: the calibration methods (:class:`CalibMethod`), TensorRT's entropy search, a per-tensor MSE
search and graph-bounded tensors.

* :func:`mse_threshold` — the ``|x|`` range whose symmetric int8 quantization (127 levels) has the smallest mean
  squared error on the tensor's own histogram: clipping error above the threshold plus rounding error below it.
  It reads the histogram calibration already keeps (no extra pass over the images): ~5 ms a tensor. The
  tensor's own error stands in for the consuming layer's output error (the layer is linear in its input, so
  with uncorrelated errors the output's MSE is the input's times the weights' energy, the same factor for
  every candidate threshold).
* :func:`bounded_tensors` — tensors whose range the graph itself bounds (ReLU6/Clip outputs, Sigmoid and
  HardSigmoid gates, and what Pad/MaxPool/Reshape pass through from them). Clipping such a tensor below what
  was seen saves at most a few levels of resolution and throws away the top of a range the network was trained
  to use (ReLU6's 6 is a saturation level, not an outlier): these keep their observed range.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

QUANT_LEVELS = 127  # symmetric int8 magnitudes above zero
PASS_THROUGH = ("Pad", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                "Concat", "Slice", "Split", "Resize", "Upsample", "GlobalMaxPool", "AveragePool",
                "GlobalAveragePool", "ReduceMean", "SpaceToDepth", "DepthToSpace")
NUM_QUANT_BINS = 128  # int8 magnitudes 0..127
PERCENTILE = 99.99


def quantization_mse(hist: np.ndarray, edge: float, thresholds: np.ndarray, levels: int = QUANT_LEVELS) -> np.ndarray:
    """Mean squared error of quantizing the ``|x|`` histogram (``len(hist)`` bins over ``[0, edge]``) with each
    of ``thresholds``: values above a threshold clip to it, values below round to the nearest of ``levels``
    levels (127: symmetric int8; 255: uint8 over ``[0, t]`` for a non-negative tensor on ORT's CPU graph)."""
    hist = np.asarray(hist, np.float64)
    total = hist.sum()
    if total == 0:
        return np.zeros(len(thresholds))
    width = edge / len(hist)
    centres = (np.arange(len(hist)) + 0.5) * width
    centres[0] = 0.0  # bin 0 holds ReLU's exact zeros (and values within a 2048th of the range: no error to speak of)
    t = np.asarray(thresholds, np.float64)[:, None]
    step = t / levels
    clipped = np.minimum(centres[None, :], t)
    rounded = np.round(clipped / step) * step
    err = (centres[None, :] - rounded) ** 2
    # below a step of one bin, bin-centre rounding under-counts: a bin's values spread over several levels
    err = np.where(centres[None, :] <= t, np.maximum(err, np.minimum(step ** 2, width ** 2) / 12.0), err)
    return (err * hist[None, :]).sum(axis=1) / total


def mse_threshold(hist: np.ndarray, edge: float, amax: float, *, candidates: int = 256,
                  levels: int = QUANT_LEVELS) -> float:
    """The threshold in ``(0, amax]`` with the least :func:`quantization_mse`; never above the observed ``amax``,
    and ``amax`` itself is always a candidate (so the search can only lower the error of plain min/max)."""
    if hist is None or amax <= 0 or np.asarray(hist).sum() == 0:
        return float(amax)
    hist = np.asarray(hist)
    lo = max(amax / 64.0, edge / len(hist))
    grid = np.unique(np.concatenate([np.geomspace(lo, amax, candidates), [amax]]))
    err = quantization_mse(hist, edge, grid, levels)
    best = int(np.argmin(err))
    if err[best] >= err[-1]:  # ties go to the observed range
        return float(amax)
    return float(grid[best])


def _constant(model, name: str) -> float | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return float(value) if value.size == 1 else None
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    value = numpy_helper.to_array(attr.t)
                    return float(value) if value.size == 1 else None
    return None


def bounded_tensors(model) -> dict[str, tuple[float, float]]:
    """``{tensor: (lo, hi)}`` for every tensor whose values the graph bounds by construction (see module doc)."""
    bounds: dict[str, tuple[float, float]] = {}
    for node in model.graph.node:
        op = node.op_type
        out = node.output[0] if node.output else None
        if out is None:
            continue
        if op == "Clip":
            lo = _constant(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None
            hi = _constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            attrs = {a.name: a.f for a in node.attribute}
            lo = attrs.get("min", lo)
            hi = attrs.get("max", hi)
            if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
                bounds[out] = (lo, hi)
        elif op in ("Sigmoid", "HardSigmoid"):
            bounds[out] = (0.0, 1.0)
        elif op == "Tanh":
            bounds[out] = (-1.0, 1.0)
        elif op in PASS_THROUGH and node.input and node.input[0] in bounds:
            if op == "Concat" and not all(i in bounds for i in node.input):
                continue
            ins = [bounds[i] for i in (node.input if op == "Concat" else node.input[:1])]
            lo, hi = min(b[0] for b in ins), max(b[1] for b in ins)
            if op == "Pad":
                lo, hi = min(lo, 0.0), max(hi, 0.0)
            for o in node.output:
                bounds[o] = (lo, hi)
    return bounds


class CalibMethod(str, Enum):
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"
    mse = "mse"

    @classmethod
    def default(cls) -> CalibMethod:
        return DEFAULT_METHOD


DEFAULT_METHOD = CalibMethod.mse  # issue 11: measured against entropy/minmax/percentile in docs/precision.md


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
