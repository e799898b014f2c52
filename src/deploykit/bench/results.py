"""What a bench produces: one :class:`Measurement` per case, one :class:`Skip` per case that could not run, and the
``bench.json`` record of them (``report.py`` reads it, ``schema.py`` checks it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deploykit.bench.host import host_line
from deploykit.bench.options import Backend, Variant, label
from deploykit.runners.base import Device
from deploykit.parity import Precision


@dataclass(frozen=True)
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples_ms: np.ndarray) -> Latency:
        p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(np.mean(samples_ms)))

    def to_json(self) -> dict[str, float]:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean}


@dataclass
class Measurement:
    backend: Backend
    precision: Precision
    device: Device
    batch: int
    variant: Variant
    latency: Latency
    iters: int
    clock: str
    artifact: str | None = None
    speedup_vs_torch: float | None = None
    rss_peak_mb: float | None = None
    rss_delta_mb: float | None = None
    gpu_mem_mb: float | None = None
    parity: dict[str, Any] | None = None
    note: str | None = None
    ran: dict[str, Any] | None = None  # what the runtime reports it ran (OpenVINO: precision, layer precisions)
    ship: bool = False  # the fastest verified row of its backend, device and batch

    @property
    def throughput(self) -> float:
        """Images per second: batch / p50 latency (runs are back to back, one at a time); the p50, like the
        speed-up, so one table uses one statistic."""
        return self.batch * 1000.0 / max(self.latency.p50, 1e-6)

    @property
    def label(self) -> str:
        return label(self.backend, self.precision, self.variant)

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend.value, "precision": self.precision.value, "device": self.device.value,
                "batch": self.batch, "latency_ms": self.latency.to_json(), "throughput": self.throughput,
                "speedup_vs_torch": self.speedup_vs_torch,
                # extras beside the contract's keys
                "variant": self.variant.value, "iters": self.iters, "clock": self.clock, "artifact": self.artifact,
                "rss_peak_mb": self.rss_peak_mb, "rss_delta_mb": self.rss_delta_mb, "gpu_mem_mb": self.gpu_mem_mb,
                "parity": self.parity, "note": self.note, "ran": self.ran, "ship": self.ship}


@dataclass(frozen=True)
class Skip:
    backend: Backend
    precision: Precision | None
    reason: str
    batch: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend.value, "precision": None if self.precision is None else self.precision.value,
                "batch": self.batch, "reason": self.reason}


@dataclass
class BenchReport:
    host: dict[str, Any]
    results: list[Measurement]
    skipped: list[Skip]
    target: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"host": {...}, "results": [...]}``; the host block also says what was benched and what was skipped."""
        return {"host": {**self.host, "target": self.target, "skipped": [s.to_json() for s in self.skipped]},
                "results": [m.to_json() for m in self.results]}

    @property
    def host_line(self) -> str:
        return host_line(self.host)


def parity_summary(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's parity record of an artifact, flattened for a table row."""
    parity = (entry or {}).get("parity")
    if not parity:
        return None
    metrics = parity.get("metrics") or {}
    keep = ("max_abs_diff", "cosine_min", "top1_agreement", "top5_agreement", "accuracy", "accuracy_drop")
    return {"passed": parity.get("passed"), "reference": parity.get("reference"), "n_images": parity.get("n_images"),
            **{k: parity[k] for k in ("data", "held_out", "domain") if k in parity},
            **{k: metrics[k] for k in keep if k in metrics}}


def add_speedups(results: list[Measurement]) -> None:
    """p50 of PyTorch eager FP32 on the same device and batch over each result's p50: a float wherever that row
    was measured, None (JSON null) only without it."""
    base = {(m.device, m.batch): m.latency.p50 for m in results
            if m.backend is Backend.torch and m.precision is Precision.FP32 and m.variant is Variant.eager}
    for m in results:
        ref = base.get((m.device, m.batch))
        # a p50 under the clock's resolution (1 ns) counts as 1 ns: still a finite float, valid JSON
        m.speedup_vs_torch = None if ref is None else float(ref / max(m.latency.p50, 1e-6))


def mark_ship(results: list[Measurement]) -> None:
    """Per backend, device and batch: the fastest row whose artifact passed its tolerance ("ship this")."""
    best: dict[tuple, Measurement] = {}
    for m in results:
        if m.backend is Backend.torch or not (m.parity or {}).get("passed"):
            continue
        key = (m.backend, m.device, m.batch)
        if key not in best or m.latency.p50 < best[key].latency.p50:
            best[key] = m
    for m in best.values():
        m.ship = True
