"""TensorRT runner: a serialized engine behind the same ``infer(batch) -> logits`` as the other runners.

Follows the TensorRT 10.x/11.x name-based runtime API ("Appendix: Python Migration Patterns for TensorRT
10.x: Migrating I/O Buffer Allocation to Named Tensors"; NVIDIA ``samples/python/common_runtime.py``):
``trt.Runtime(logger).deserialize_cuda_engine(plan)``, ``engine.num_io_tensors`` / ``get_tensor_name(i)`` /
``get_tensor_mode`` / ``get_tensor_dtype`` / ``get_tensor_shape`` / ``get_tensor_profile_shape``,
``context.set_input_shape``, ``context.set_tensor_address`` for every I/O tensor, then
``context.execute_async_v3(stream)``. Memory and streams come from cuda-python's runtime bindings
(``cudaMalloc``, ``cudaMemcpyAsync``, ``cudaStreamSynchronize``).

Before deserializing, the engine's facts in ``deploykit.json`` are checked against the running TensorRT and
GPU (:func:`deploykit.tensorrt.host.check_compatible`), so an engine from another version or GPU gives one
clear line instead of TensorRT's own failure. A load that fails raises EngineMismatchError; a loaded engine that
cannot run (no execution context, a CUDA error, a failed execution) raises EngineRuntimeError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploykit.messages import SILENT, Reporter
from deploykit.errors import EngineMismatchError, EngineRuntimeError, InputError
from deploykit.manifest import MANIFEST_NAME, Manifest
from deploykit.runners.base import Opened, Runner
from deploykit.tensorrt.host import (Probe, check_compatible, cuda_check, cuda_handle, cudart, engine_host, probe_host,
                                     trt_logger)


class TensorRTRunner(Runner):
    """``activate()`` checks the engine's manifest facts against this host, deserializes the plan, and allocates
    device buffers for the largest batch its profile takes (``buffers``, by tensor name) on its own ``stream``."""

    name = "tensorrt"
    engine, context, stream, buffers, dtypes = Opened(), Opened(), Opened(), Opened(), Opened()
    input_name, output_name, output_names = Opened(), Opened(), Opened()
    input_shape, fixed_batch, min_batch, max_batch = Opened(), Opened(), Opened(), Opened()
    rt, host, runtime = Opened(), Opened(), Opened()  # cuda-python's runtime; the TensorRT and GPU; trt.Runtime

    def __init__(self, path: Path, *, reporter: Reporter = SILENT, probe: Probe = probe_host) -> None:
        self.path, self.reporter, self.probe = Path(path), reporter, probe

    def _activate(self) -> None:
        path, reporter = self.path, self.reporter
        if not path.is_file():
            raise InputError(f"engine not found: {path}")
        folder = path.parent
        entry = None
        if (folder / MANIFEST_NAME).is_file():
            entry = Manifest.load(folder).artifact(path.name)
        precision = entry.precision if entry is not None else "fp32"
        trt, host = engine_host(f"cannot run {path.name}", probe=self.probe)
        facts = entry.engine if entry is not None else None
        if facts:
            check_compatible(facts, host, engine=path.name, folder=folder, reporter=reporter)
        else:
            reporter.warn(f"{path.name} has no facts in {MANIFEST_NAME}: cannot check its TensorRT version and GPU first")
        self.host, self.rt, self.buffers, self.stream = host, cudart(), {}, None
        logger = trt_logger(trt)
        logger.reset()
        self.runtime = trt.Runtime(logger)  # kept: it outlives the engines it deserialized
        self.engine = engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            why = logger.errors[0] if logger.errors else "not a TensorRT plan, or built by another TensorRT"
            raise EngineMismatchError(f"TensorRT {host.tensorrt} cannot load {path.name} on {host.gpu}: {why}; "
                                      f"rebuild it here: deploykit build {folder} --precision {precision}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise InputError(f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs; deploykit runs "
                             "classifiers with one image input")
        self.input_name, self.output_names, self.output_name = inputs[0], outputs, outputs[0]
        shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        self.input_shape = shape[1:]
        if shape[0] < 0:
            lo, _, hi = engine.get_tensor_profile_shape(self.input_name, 0)
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
            self.fixed_batch = None
        else:
            self.min_batch = self.max_batch = shape[0]
            self.fixed_batch = shape[0]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineRuntimeError(f"TensorRT could not create an execution context for {path.name} (GPU memory?)")
        self.stream = cuda_check(self.rt.cudaStreamCreate())
        self._out_shapes: dict[str, tuple[int, ...]] = {}
        self.shapes_for(self.max_batch)  # output shapes at the largest batch size the buffers must hold
        for n in names:
            count = int(np.prod(self._out_shapes[n] if n in self._out_shapes else (self.max_batch, *self.input_shape)))
            self.buffers[n] = cuda_check(self.rt.cudaMalloc(max(count, 1) * self.dtypes[n].itemsize))
            if not self.context.set_tensor_address(n, self.buffers[n]):
                raise EngineRuntimeError(f"TensorRT rejected the buffer address of {n!r}")

    # -- shapes ------------------------------------------------------------------------------------
    def shapes_for(self, n: int) -> dict[str, tuple[int, ...]]:
        """Output shapes for a batch of ``n``; a dynamic batch is set on the context first (set_input_shape)."""
        if self.fixed_batch is not None:
            if n != self.fixed_batch:
                raise InputError(f"{self.path.name} was built for batch {self.fixed_batch}, not {n}")
        elif not self.context.set_input_shape(self.input_name, (n, *self.input_shape)):
            raise InputError(f"{self.path.name} takes batches of {self.min_batch} to {self.max_batch}, not {n}")
        shapes = {o: tuple(int(d) for d in self.context.get_tensor_shape(o)) for o in self.output_names}
        if not self._out_shapes:
            self._out_shapes = shapes
        return shapes

    # -- inference ---------------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start:start + self.max_batch]
            n = chunk.shape[0]
            if n < self.min_batch:  # below the profile: pad with copies of the last image, drop them after
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_batch - n, axis=0)])
            outs.append(self._execute(chunk)[:n])
        return np.concatenate(outs).astype(np.float32)

    def _execute(self, chunk: np.ndarray) -> np.ndarray:
        rt = self.rt
        shapes = self.shapes_for(chunk.shape[0])
        host_in = np.ascontiguousarray(chunk, dtype=self.dtypes[self.input_name])
        host_out = np.empty(shapes[self.output_name], dtype=self.dtypes[self.output_name])
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(rt.cudaMemcpyAsync(self.buffers[self.input_name], host_in.ctypes.data, host_in.nbytes, h2d,
                                      self.stream))
        if not self.context.execute_async_v3(cuda_handle(self.stream)):
            raise EngineRuntimeError(f"TensorRT failed to execute {self.path.name}")
        cuda_check(rt.cudaMemcpyAsync(host_out.ctypes.data, self.buffers[self.output_name], host_out.nbytes, d2h,
                                      self.stream))
        cuda_check(rt.cudaStreamSynchronize(self.stream))
        return host_out

    def _release(self) -> None:
        rt = getattr(self, "rt", None)
        if rt is not None:
            for ptr in (getattr(self, "buffers", None) or {}).values():
                rt.cudaFree(ptr)
            if getattr(self, "stream", None) is not None:
                rt.cudaStreamDestroy(self.stream)
        self.buffers, self.stream, self.context, self.engine, self.runtime = {}, None, None, None, None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may be gone already
            pass


__all__ = ["TensorRTRunner"]
