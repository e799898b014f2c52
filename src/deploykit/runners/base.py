"""One runner interface: ``infer(batch) -> logits``, input checks in the base class (as Polygraphy does)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum

import numpy as np

from deploykit.errors import InputError


class Device(str, Enum):
    """Where a model runs, trains or is benched: the CPU or the first CUDA GPU (``--device``)."""

    cpu = "cpu"
    cuda = "cuda"


class Backend(str, Enum):
    """Where an artifact runs (``--backend``, ``--backends``): PyTorch (a checkpoint), ONNX Runtime, OpenVINO (CPU,
    ONNX files) or TensorRT (engines). :func:`deploykit.runners.open` maps a file and a backend to a runner."""

    torch = "torch"
    ort = "ort"
    ov = "ov"
    trt = "trt"


class Runner(ABC):
    """Runs one model on float32 ``N x C x H x W`` batches and returns float32 ``N x classes`` logits.

    ``fixed_batch`` is set when the artifact only accepts one batch size; ``infer`` then splits (and pads the
    last chunk) so callers never care. ``close()`` releases what the runner holds (a session, a compiled model,
    GPU buffers); a runner is a context manager that closes on exit.
    """

    name: str = "runner"
    input_shape: tuple[int, ...]  # C, H, W
    fixed_batch: int | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim == len(self.input_shape):
            batch = batch[None]
        if batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        if tuple(batch.shape[1:]) != tuple(self.input_shape):
            raise InputError(f"{self.name} expects inputs of shape N x {' x '.join(map(str, self.input_shape))}, "
                             f"got {' x '.join(map(str, batch.shape))}")
        if self.fixed_batch is None or batch.shape[0] == self.fixed_batch:
            return self._logits(self._run(np.ascontiguousarray(batch)), batch.shape[0])
        outputs = []
        step = self.fixed_batch
        for start in range(0, batch.shape[0], step):
            chunk = batch[start:start + step]
            n = chunk.shape[0]
            if n < step:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
            outputs.append(self._logits(self._run(np.ascontiguousarray(chunk)), step)[:n])
        return np.concatenate(outputs)

    def close(self) -> None:
        """Release the runtime's resources; the runner does not infer again."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _logits(self, out: np.ndarray, n: int) -> np.ndarray:
        if out.ndim != 2 or out.shape[0] != n:
            raise InputError(f"{self.name}: the model returned an output of shape {tuple(out.shape)}, not "
                             f"[{n}, classes] logits; deploykit runs image classifiers")
        return out

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray: ...
