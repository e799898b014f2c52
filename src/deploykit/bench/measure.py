"""Timing and memory of the cases of one batch size: load each case's model bound to the benchmark batch (one loader
per backend; artifacts through ``runners.open``), warm it up, then time the cases in alternating rounds and read the
process's peak RSS around each load.

Rounds: each round runs every loaded case in turn (the order reversed every other round), so a busy second on a
shared host distorts one round, not one row; ratios are taken within a round, then the median over rounds
(``results.add_speedups``; docs/bench.md). The timed step is the bare call a hand-written loop makes on the activated
runner: ``session.run`` with a feed built beforehand, ``request.infer``, ``module(x)`` under ``inference_mode``,
TensorRT's ``execute_async_v3`` timed with CUDA events. Memory: ``rss_delta_mb`` is the peak RSS (``VmHWM``, reset
through ``/proc/self/clear_refs``) over a case's load and warm-up minus the RSS before it; ``rss_peak_mb`` is the
RSS before the batch's first model plus that delta.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import runners
from deploykit.bench.host import cuda_used_mb
from deploykit.bench.options import (DEFAULT_BUDGET_S, DEFAULT_ITERS, MIN_ITERS, Backend, BenchOptions, Variant,
                                     label)
from deploykit.bench.results import Latency, Measurement
from deploykit.errors import DeployKitError, EngineRuntimeError, InputError
from deploykit.manifest import Manifest
from deploykit.parity import Precision
from deploykit.runners import OnnxRuntimeRunner, OpenVINORunner, TensorRTRunner
from deploykit.runners.base import Device
from deploykit.runners.torch import TorchRunner
from deploykit.tensorrt.host import cuda_check, cuda_handle
from deploykit.verify import reference_runner

ORT_DENORMAL_CONFIG = {"session.set_denormal_as_zero": "1"}

Step = Callable[[], Any]


# ------------------------------------------------------------------------------------------------ clocks


def wall_ms(step: Step) -> float:
    t0 = time.perf_counter_ns()
    step()
    return (time.perf_counter_ns() - t0) / 1e6


def cuda_events_ms(step: Step) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def self_clock(step: Callable[[], float]) -> float:
    """The clock of a step that times itself (``TrtSteps``: CUDA events on the runner's stream) and returns ms."""
    return step()


def time_loop(step: Step, *, warmup: int, iters: int | None, seconds: float | None,
              clock: Callable[[Step], float] = wall_ms, most: int = DEFAULT_ITERS, least: int = MIN_ITERS,
              budget_s: float = DEFAULT_BUDGET_S) -> np.ndarray:
    """Latencies in ms of back-to-back calls of ``step`` after ``warmup`` untimed calls.

    ``iters``: exactly that many; ``seconds``: until that much time has passed (at least one call); neither:
    ``most`` calls, or fewer (never under ``least``) once ``budget_s`` has passed.
    """
    for _ in range(warmup):
        step()
    if iters is not None:
        return np.array([clock(step) for _ in range(iters)])
    samples: list[float] = []
    start = time.perf_counter()
    if seconds is not None:
        while not samples or time.perf_counter() - start < seconds:
            samples.append(clock(step))
        return np.array(samples)
    while len(samples) < most and (len(samples) < least or time.perf_counter() - start < budget_s):
        samples.append(clock(step))
    return np.array(samples)


# ---------------------------------------------------------------------------------------------- memory


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS before a case is not inflated
    by what earlier cases freed -- and a case cannot hide its own cost by reusing those pages."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def rss_window() -> Iterator[dict[str, float | None]]:
    _release_freed_memory()
    before = _rss()
    resettable = _reset_peak_rss()
    out: dict[str, float | None] = {"peak": None, "delta": None}
    try:
        yield out
    finally:
        peak = _peak_rss() if resettable else None
        if peak is None:  # no kernel counter: the RSS at the end is a lower bound of the peak
            peak = max(before, _rss())
        out["peak"] = peak / 2**20
        out["delta"] = max(peak - before, 0) / 2**20


# ------------------------------------------------------------------------------------------------ cases


@dataclass
class Prepared:
    """A loaded model bound to the benchmark batch: ``step()`` runs one iteration."""

    step: Step
    clock: Callable[[Step], float]
    clock_name: str
    close: Callable[[], None] = lambda: None
    gpu_mem_mb: Callable[[], float | None] = lambda: None
    ran: dict[str, Any] | None = None


@dataclass
class Case:
    """One (backend, precision, variant, batch) to measure; ``prepare(batch)`` loads its model."""

    backend: Backend
    precision: Precision
    variant: Variant
    batch: int
    prepare: Callable[[np.ndarray], Prepared]
    artifact: str | None = None
    parity: dict[str, Any] | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        return f"{label(self.backend, self.precision, self.variant)} b{self.batch}"


ROUNDS = 5  # rounds per batch size; --iters N < ROUNDS gives N rounds of one iteration


@dataclass(frozen=True)
class RoundPlan:
    """How the timed iterations of a case are split over rounds."""

    rounds: int
    iters: tuple[int, ...] | None  # per round (--iters: their sum is exactly --iters)
    seconds: float | None  # per round (--seconds S: S / rounds)
    most: int  # neither: at most this many per round ...
    least: int  # ... never fewer than this ...
    budget_s: float  # ... stopping once this much time has passed in the round

    @classmethod
    def of(cls, options: BenchOptions) -> RoundPlan:
        rounds = ROUNDS if options.iters is None else max(1, min(ROUNDS, options.iters))
        iters = None
        if options.iters is not None:
            base, extra = divmod(options.iters, rounds)
            iters = tuple(base + (r < extra) for r in range(rounds))
        return cls(rounds, iters, None if options.seconds is None else options.seconds / rounds,
                   most=-(-DEFAULT_ITERS // rounds), least=max(1, -(-MIN_ITERS // rounds)),
                   budget_s=DEFAULT_BUDGET_S / rounds)

    def time(self, prepared: Prepared, r: int) -> np.ndarray:
        """Round ``r`` of a loaded case: one untimed call (the other cases ran since: caches are cold), then its
        share of the iterations."""
        return time_loop(prepared.step, warmup=1, iters=None if self.iters is None else self.iters[r],
                         seconds=self.seconds, clock=prepared.clock, most=self.most, least=self.least,
                         budget_s=self.budget_s)


@dataclass
class _Loaded:
    case: Case
    prepared: Prepared | None
    rss: dict[str, float | None]
    gpu: float | None
    rounds: list[np.ndarray]


def measure_cases(cases: list[Case], batch: np.ndarray, options: BenchOptions,
                  on_step: Callable[[str], None] = lambda _: None
                  ) -> tuple[list[Measurement], list[tuple[Case, DeployKitError]]]:
    """Load every case (same batch size) with its warm-up, then time them in alternating rounds.

    Returns the measurements, and each case that failed with a user-facing error (an engine TensorRT refuses, a
    batch its profile does not take) with that error; the other cases still run. ``on_step(text)`` is called
    before each load and round (progress)."""
    plan = RoundPlan.of(options)
    loaded: list[_Loaded] = []
    failed: list[tuple[Case, DeployKitError]] = []
    _release_freed_memory()
    base = _rss()
    try:
        for case in cases:
            on_step(f"loading {case.label}")
            prepared = None
            try:
                with rss_window() as rss:
                    prepared = case.prepare(batch)
                    for _ in range(options.warmup):
                        prepared.step()
                    gpu = prepared.gpu_mem_mb()
            except DeployKitError as exc:
                if prepared is not None:
                    prepared.close()
                failed.append((case, exc))
                continue
            loaded.append(_Loaded(case, prepared, rss, gpu, []))
        for r in range(plan.rounds):
            on_step(f"round {r + 1}/{plan.rounds}")
            for item in loaded if r % 2 == 0 else loaded[::-1]:
                if item.prepared is None:
                    continue
                try:
                    item.rounds.append(plan.time(item.prepared, r))
                except DeployKitError as exc:
                    failed.append((item.case, exc))
                    item.prepared.close()
                    item.prepared = None
    finally:
        for item in loaded:
            if item.prepared is not None:
                item.prepared.close()
    out = []
    for item in loaded:
        if item.prepared is None:
            continue
        case, prepared = item.case, item.prepared
        samples = np.concatenate(item.rounds)
        delta = item.rss["delta"]
        out.append(Measurement(case.backend, case.precision, options.device, case.batch, case.variant,
                               Latency.of(samples), len(samples), clock=prepared.clock_name, artifact=case.artifact,
                               rss_peak_mb=None if delta is None else base / 2**20 + delta, rss_delta_mb=delta,
                               gpu_mem_mb=item.gpu, parity=case.parity, note=case.note, ran=prepared.ran,
                               round_p50=[float(np.median(r)) for r in item.rounds]))
    return out, failed


def measure(case: Case, batch: np.ndarray, options: BenchOptions) -> Measurement:
    """One case alone, in rounds (a user-facing error raises)."""
    results, failed = measure_cases([case], batch, options)
    if failed:
        raise failed[0][1]
    return results[0]


# ------------------------------------------------------------------------------- loaders, one per backend


def _reference_module(folder: Path, manifest: Manifest):
    """The PyTorch module the folder was exported from, as ``verify.reference_runner`` loads it."""
    runner, _ = reference_runner(folder, manifest)
    if not isinstance(runner, TorchRunner):
        raise DeployKitError(f"no PyTorch reference: {getattr(runner, 'reason', None) or 'its source is unusable'}")
    return runner.module


def torch_prepare(folder: Path, manifest: Manifest, device: Device, variant: Variant,
                  threads: int) -> Callable[[np.ndarray], Prepared]:
    def prepare(batch: np.ndarray) -> Prepared:
        import torch

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)  # DENORMALS; bench_folder restores the setting
        module = _reference_module(folder, manifest)
        channels_last = variant in (Variant.channels_last, Variant.channels_last_autocast)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        module = module.to(device.value, memory_format=fmt) if channels_last else module.to(device.value)
        if variant is Variant.compiled:
            module = torch.compile(module)
        autocast = (torch.autocast("cuda", dtype=torch.float16) if variant is Variant.channels_last_autocast
                    else contextlib.nullcontext())
        if device is Device.cpu:
            x = torch.from_numpy(batch).contiguous(memory_format=fmt)

            def step():
                with torch.inference_mode():
                    return module(x)

            clock, clock_name = wall_ms, "perf_counter"
        else:
            torch.cuda.reset_peak_memory_stats()
            x_host = torch.from_numpy(batch).pin_memory()
            with torch.inference_mode(), autocast:
                out = module(x_host.to("cuda").contiguous(memory_format=fmt))
            out_host = torch.empty(tuple(out.shape), dtype=out.dtype).pin_memory()

            def step():  # pinned host -> device, forward, device -> pinned host: what a caller waits for
                with torch.inference_mode(), autocast:
                    y = module(x_host.to("cuda", non_blocking=True).contiguous(memory_format=fmt))
                    out_host.copy_(y, non_blocking=True)

            clock, clock_name = cuda_events_ms, "cuda-events"
        if variant is Variant.compiled:
            with torch.inference_mode(), autocast:
                step()  # compile outside the warm-up and the timed loop
        gpu = (lambda: torch.cuda.max_memory_allocated() / 2**20) if device is Device.cuda else (lambda: None)
        return Prepared(step, clock, clock_name, gpu_mem_mb=gpu)

    return prepare


def ort_prepare(path: Path, device: Device, threads: int) -> Callable[[np.ndarray], Prepared]:
    def prepare(batch: np.ndarray) -> Prepared:
        before = cuda_used_mb() if device is Device.cuda else None
        runner = runners.open(path, Backend.ort, device=device, threads=threads, session_config=ORT_DENORMAL_CONFIG)
        gpu = (lambda: max((cuda_used_mb() or 0.0) - (before or 0.0), 0.0)) if device is Device.cuda else (lambda: None)
        return Prepared(ort_step(runner, batch), wall_ms, "perf_counter", close=runner.close, gpu_mem_mb=gpu)

    return prepare


def ort_step(runner: OnnxRuntimeRunner, batch: np.ndarray) -> Step:
    """The bare call bench times on an activated ONNX Runtime runner: ``session.run`` with a feed built beforehand."""
    session, outputs, feed = runner.session, [runner.output_name], {runner.input_name: batch}
    return lambda: session.run(outputs, feed)


def ov_prepare(path: Path, variant: Variant, threads: int) -> Callable[[np.ndarray], Prepared]:
    def prepare(batch: np.ndarray) -> Prepared:
        runner = runners.open(path, Backend.ov, inference_precision=variant.value, threads=threads)
        if runner.inference_precision != variant.value:
            runner.close()
            raise DeployKitError(f"OpenVINO was asked for {variant.value} but reports "
                                 f"{runner.inference_precision}: not measured")
        ran = {"runtime": f"openvino {runner.version}", "inference_precision": runner.inference_precision,
               "layer_precisions": runner.layer_precisions, "compile_s": runner.compile_s,
               "loaded_from_cache": runner.loaded_from_cache}
        return Prepared(ov_step(runner, batch), wall_ms, "perf_counter", close=runner.close, ran=ran)

    return prepare


def ov_step(runner: OpenVINORunner, batch: np.ndarray) -> Step:
    """The bare call bench times on an activated OpenVINO runner: ``request.infer`` on a batch prepared beforehand."""
    request, feed = runner.request, {0: np.ascontiguousarray(batch, dtype=np.float32)}
    return lambda: request.infer(feed)


def trt_prepare(path: Path, variant: Variant) -> Callable[[np.ndarray], Prepared]:
    def prepare(batch: np.ndarray) -> Prepared:
        before = cuda_used_mb()
        runner = runners.open(path, Backend.trt)
        gpu = lambda: max((cuda_used_mb() or 0.0) - (before or 0.0), 0.0)  # noqa: E731
        try:
            steps = TrtSteps(runner, batch)
        except BaseException:
            runner.close()
            raise
        step = steps.end_to_end if variant is Variant.end_to_end else steps.compute
        return Prepared(step, self_clock, "cuda-events", close=lambda: (steps.close(), runner.close()), gpu_mem_mb=gpu)

    return prepare


class TrtSteps:
    """One timed iteration on an activated TensorRT runner's stream, measured with CUDA events: ``end_to_end()``
    copies the batch from pinned host memory to the device, executes and copies the logits back (trtexec's
    "Latency"); ``compute()`` executes on device buffers only ("GPU Compute Time"). Each returns ms; ``close()``
    frees the pinned buffers and events."""

    def __init__(self, runner: TensorRTRunner, batch: np.ndarray) -> None:
        rt = runner.rt
        self.runner, self.rt = runner, rt
        batch = np.ascontiguousarray(batch, dtype=runner.dtypes[runner.input_name])
        n = batch.shape[0]
        if not runner.min_batch <= n <= runner.max_batch:
            raise InputError(f"{runner.path.name} takes batches of {runner.min_batch} to {runner.max_batch}, not {n}")
        out_shape = runner.shapes_for(n)[runner.output_name]
        self.in_bytes = batch.nbytes
        self.out_bytes = int(np.prod(out_shape)) * runner.dtypes[runner.output_name].itemsize
        # pinned host buffers, as trtexec uses for its H2D/D2H copies
        self.host_in = cuda_check(rt.cudaMallocHost(self.in_bytes))
        self.host_out = cuda_check(rt.cudaMallocHost(self.out_bytes))
        ctypes.memmove(int(self.host_in), batch.ctypes.data, self.in_bytes)
        self.start = cuda_check(rt.cudaEventCreate())
        self.end = cuda_check(rt.cudaEventCreate())

    def _timed(self, copies: bool) -> float:
        rt, r = self.rt, self.runner
        cuda_check(rt.cudaEventRecord(self.start, r.stream))
        if copies:
            cuda_check(rt.cudaMemcpyAsync(r.buffers[r.input_name], self.host_in, self.in_bytes,
                                          rt.cudaMemcpyKind.cudaMemcpyHostToDevice, r.stream))
        if not r.context.execute_async_v3(cuda_handle(r.stream)):
            raise EngineRuntimeError(f"TensorRT failed to execute {r.path.name}")
        if copies:
            cuda_check(rt.cudaMemcpyAsync(self.host_out, r.buffers[r.output_name], self.out_bytes,
                                          rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, r.stream))
        cuda_check(rt.cudaEventRecord(self.end, r.stream))
        cuda_check(rt.cudaEventSynchronize(self.end))
        return float(cuda_check(rt.cudaEventElapsedTime(self.start, self.end)))

    def end_to_end(self) -> float:
        return self._timed(copies=True)

    def compute(self) -> float:
        return self._timed(copies=False)

    def close(self) -> None:
        rt = self.rt
        for event in (self.start, self.end):
            rt.cudaEventDestroy(event)
        rt.cudaFreeHost(self.host_in)
        rt.cudaFreeHost(self.host_out)
