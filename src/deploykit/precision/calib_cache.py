"""The calibration cache: :class:`Ranges` (a calibration's result: ranges and bias shifts) and its file beside the
artifacts (``calib-<method>-<key>.json``), keyed by the graph, the image bytes, the preprocessing and the method,
so a re-export does not recalibrate."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.errors import InputError
from deploykit.files import read_json, write_json_atomic
from deploykit.precision.ranges import CalibMethod

# 9: no histogram (amax = observed) for tensors a method cannot clip (mse: the CPU graph's own); 7: histograms of
# strided samples; 6: the drift part kept apart, shifts on the folded Q/DQ path; 5: drift-corrected last layers;
# 4: graph-bounded ranges, mse, bias shifts; 3: histograms pooled per 16 images
CACHE_FORMAT = "deploykit-calib/9"
SHIFT_FIELDS = ("bias", "drift", "bias_cpu", "drift_cpu")  # bias shifts in the cache: TensorRT graph, CPU graph


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
