"""Latency and throughput of every artifact of an export folder, side by side with the PyTorch reference.

One module per job (read ``run.py`` first):

* ``options``  what is asked for: backends, precisions, batch sizes, device, threads, how long to time;
* ``host``     the machine: host info for ``bench.json``, and :func:`probe` -> :class:`Capabilities` (what can run
  here; every TensorRT/CUDA question bench asks goes through it);
* ``plan``     one planner per backend: cases to measure and skips with their reasons, from the capabilities;
* ``measure``  one loader per backend, the timing loop, the clocks, the RSS window;
* ``results``  measurements, skips and the ``bench.json`` record;
* ``output``   table rows, markdown, plot (the rich table is drawn in ``deploykit.cli.render_bench``);
* ``run``      a bench from start to end: target, probe, plan, measure, verify OpenVINO rows as they ran.

How a case is measured (the method trtexec and ``torch.utils.benchmark`` use):

* one input batch is prepared before any timing (real photos through the folder's preprocessing, tiled to the
  batch size); on CUDA it sits in pinned host memory;
* every case of a batch size loads its model and runs ``warmup`` untimed iterations; then they are timed in
  ``ROUNDS`` alternating rounds (each round runs every case, the order reversed every other round), one clock
  reading around each call: ``time.perf_counter_ns`` on the CPU, CUDA events plus synchronisation on the GPU;
  a speed-up is taken within each round, then the median of rounds (its range beside it), and a row whose
  rounds disagree is marked unstable (``results.mark_unstable``);
* PyTorch (``torch.set_num_threads``, one inter-op thread) and ONNX Runtime (``intra_op_num_threads``, one
  inter-op thread) get the same thread budget, all cores by default;
* denormals are flushed to zero in every backend (``torch.set_flush_denormal(True)``, ONNX Runtime's
  ``session.set_denormal_as_zero``): random or badly scaled weights can otherwise drive one backend into
  denormal arithmetic, orders of magnitude slower, and a "speed-up" would measure that, not the graph;
* the step that is timed is the bare call -- ``session.run`` with a feed built beforehand, ``module(x)`` under
  ``inference_mode`` -- so bench adds nothing a hand-written loop would not.

Memory: both frameworks are imported before the first case, then for each case the kernel's peak-RSS counter
is reset (``/proc/self/clear_refs``), the model is loaded and warmed up, and ``VmHWM`` is read back.
``rss_delta_mb`` is that peak minus the RSS before loading: what this backend and precision cost on top of the
process; ``rss_peak_mb`` is the RSS before the batch size's first model plus that delta (what a process serving
this one model peaks at, libraries included). The models of one batch size stay loaded through its rounds and
are freed before the next batch size.

Progress and messages go through ``reporter=`` (``deploykit.messages``); a call from Python prints nothing.
Heavy frameworks (torch, onnxruntime, openvino, tensorrt) are imported inside the functions that need them.
"""

from __future__ import annotations

from deploykit.bench.host import DENORMALS, Capabilities, host_info, host_line, probe
from deploykit.bench.measure import (ORT_DENORMAL_CONFIG, ROUNDS, Case, Prepared, TrtSteps, measure, measure_cases,
                                     time_loop)
from deploykit.bench.options import (DEFAULT_MODEL, Backend, BenchOptions, Variant, default_backends, parse_batches,
                                     parse_list)
from deploykit.bench.output import (model_title, ratio_cell, rows, ship_lines, skip_text, unstable_lines,
                                    write_markdown, write_plot)
from deploykit.bench.plan import plan_cases
from deploykit.bench.results import BenchReport, Latency, Measurement, Skip
from deploykit.bench.run import (bench_artifact, bench_folder, bench_input, bench_target, default_target,
                                 latest_export)
from deploykit.runners.base import Device

__all__ = ["DEFAULT_MODEL", "DENORMALS", "ORT_DENORMAL_CONFIG", "Backend", "BenchOptions", "BenchReport",
           "Capabilities", "Case", "Device", "Latency", "Measurement", "Prepared", "Skip", "TrtSteps", "Variant",
           "bench_artifact", "bench_folder", "bench_input", "bench_target", "default_backends", "default_target",
           "host_info", "host_line", "latest_export", "measure", "measure_cases", "ROUNDS", "model_title", "parse_batches", "parse_list",
           "plan_cases", "probe", "ratio_cell", "rows", "ship_lines", "skip_text", "time_loop", "unstable_lines",
           "write_markdown", "write_plot"]
