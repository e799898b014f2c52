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


class Opened:
    """An attribute that ``activate()`` sets (a session, the input shape): reading it activates a runner that is not
    active yet, so a runner made without ``with`` or ``activate()`` opens on first use, as ``infer`` does."""

    def __set_name__(self, owner, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, runner, owner=None):
        if runner is None:
            return self
        if not runner.active:
            runner.activate()
        try:
            return runner.__dict__[self.slot]
        except KeyError:
            raise AttributeError(f"{type(runner).__name__}.{self.name} is set by activate()") from None

    def __set__(self, runner, value) -> None:
        runner.__dict__[self.slot] = value


class Runner(ABC):
    """Runs one model on float32 ``N x C x H x W`` batches and returns float32 ``N x classes`` logits.

    Lifecycle (as Polygraphy's runners): ``__init__`` stores the file and options; ``activate()`` opens what the
    runner runs on (an ONNX Runtime session, an OpenVINO compiled model, a TensorRT engine) and sets
    ``input_shape``, ``fixed_batch`` and the backend's handles; the first ``infer`` (or read of an :class:`Opened`
    attribute) activates a runner nobody activated; ``close()`` releases what it holds, and a later use opens it
    again. A runner is a context manager: ``with`` activates it and closes it on exit.

    ``fixed_batch`` is set when the artifact only accepts one batch size; ``infer`` then splits (and pads the
    last chunk) so callers never care.
    """

    name: str = "runner"
    input_shape: tuple[int, ...]  # C, H, W
    fixed_batch: int | None = None
    active: bool = False

    def activate(self) -> Runner:
        """Open the session / compiled model / engine (a no-op when active); a load error raises here and leaves
        the runner closed."""
        if not self.active:
            self.active = True  # what _activate sets is read back as it is set, not re-activated
            try:
                self._activate()
            except BaseException:
                self.close()
                raise
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.activate()
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
        """Release the runtime's resources (a no-op when not active)."""
        if self.active:
            try:
                self._release()
            finally:
                self.active = False

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    def _activate(self) -> None:
        """Open the runtime (subclasses with something to open)."""

    def _release(self) -> None:
        """Drop what ``_activate`` opened; called on a partial activation too, so read handles with a default."""

    def _logits(self, out: np.ndarray, n: int) -> np.ndarray:
        if out.ndim != 2 or out.shape[0] != n:
            raise InputError(f"{self.name}: the model returned an output of shape {tuple(out.shape)}, not "
                             f"[{n}, classes] logits; deploykit runs image classifiers")
        return out

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray: ...
