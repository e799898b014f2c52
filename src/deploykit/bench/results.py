"""What a bench produces: one :class:`Measurement` per case, one :class:`Skip` per case that could not run, and the
``bench.json`` record of them (``report_page.py`` reads it, ``schema.py`` checks it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploykit.bench.host import host_line
from deploykit.bench.options import Backend, Variant, label
from deploykit.manifest import Artifact, verified
from deploykit.runners.base import Device
from deploykit.parity import Precision

BENCH_NAME = "bench.json"  # the record beside an export folder (`deploykit report` reads it)
BENCH_PLOT = "bench.png"  # the plot beside it

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
    ship: bool = False  # the fastest verified row of its backend, device and batch (fastest_verified)
    round_p50: list[float] | None = None  # the p50 of each timing round (bench.measure: alternating rounds)
    speedup_range: tuple[float, float] | None = None  # lowest and highest per-round speed-up vs torch
    unstable: list[str] = field(default_factory=list)  # why this row's figures are not to be taken as results

    @property
    def stable(self) -> bool:
        return not self.unstable

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
                "parity": self.parity, "note": self.note, "ran": self.ran, "ship": self.ship,
                "rounds": len(self.round_p50 or ()) or None, "round_p50_ms": self.round_p50,
                "speedup_vs_torch_range": None if self.speedup_range is None else list(self.speedup_range),
                "stable": self.stable, "unstable": list(self.unstable)}


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


def parity_summary(entry: Artifact | None) -> dict[str, Any] | None:
    """The manifest's parity record of an artifact, flattened for a table row."""
    parity = entry.parity if entry is not None else None
    if not parity:
        return None
    metrics = parity.get("metrics") or {}
    keep = ("max_abs_diff", "cosine_min", "top1_agreement", "top5_agreement", "accuracy", "accuracy_drop")
    return {"passed": parity.get("passed"), "reference": parity.get("reference"), "n_images": parity.get("n_images"),
            **{k: parity[k] for k in ("data", "held_out", "domain") if k in parity},
            **{k: metrics[k] for k in keep if k in metrics}}


# A row is unstable when its rounds disagree by more than this factor (the rounds' second lowest and second
# highest value from 4 rounds on, so one busy round alone does not mark it; every round below 4), ...
ROUND_SPREAD = 1.25
# ... or when its p50 is above its mean by more than this factor: most samples fast, a mass of slow ones.
P50_OVER_MEAN = 1.02


def round_ratio(ref: Measurement, m: Measurement) -> tuple[float, float, float]:
    """``ref``'s latency over ``m``'s (a speed-up: > 1 is faster than ``ref``) as ``(median, lowest, highest)`` of
    the per-round ratios: a ratio is taken within a round (both ran in it, side by side), then the median of
    rounds. Rows without rounds (built by hand): the ratio of the p50s."""
    if ref.round_p50 and m.round_p50 and len(ref.round_p50) == len(m.round_p50):
        ratios = [a / max(b, 1e-6) for a, b in zip(ref.round_p50, m.round_p50)]
    else:  # a p50 under the clock's resolution (1 ns) counts as 1 ns: still a finite float, valid JSON
        ratios = [ref.latency.p50 / max(m.latency.p50, 1e-6)]
    return float(np.median(ratios)), float(min(ratios)), float(max(ratios))


def _spread(values: list[float]) -> float:
    """Highest over lowest of ``values`` without the single highest and lowest from 4 values on."""
    v = sorted(values)
    if len(v) >= 4:
        v = v[1:-1]
    return v[-1] / max(v[0], 1e-9) if v else 1.0


def add_speedups(results: list[Measurement]) -> None:
    """PyTorch eager FP32's latency on the same device and batch over each result's, per round, then the median of
    rounds: a float wherever that row was measured, None (JSON null) only without it; the rounds' range beside it.
    Then :func:`mark_unstable`."""
    base = {(m.device, m.batch): m for m in results
            if m.backend is Backend.torch and m.precision is Precision.FP32 and m.variant is Variant.eager}
    for m in results:
        ref = base.get((m.device, m.batch))
        if ref is None:
            m.speedup_vs_torch, m.speedup_range = None, None
            continue
        median, low, high = round_ratio(ref, m)
        m.speedup_vs_torch, m.speedup_range = median, (low, high)
    mark_unstable(results, base)


def mark_unstable(results: list[Measurement], base: dict | None = None) -> None:
    """Say why a row's figures are not results: its rounds disagree, its p50 is above its mean, a smaller batch of
    the same row was slower per batch than a larger one (it does less work), or the PyTorch row its speed-up is
    taken against is itself unstable."""
    base = base or {}
    for m in results:
        reasons = []
        is_ref = base.get((m.device, m.batch)) is m
        rounds = m.round_p50 or []
        if not is_ref and m.speedup_range is not None and len(rounds) > 1:
            ref_rounds = base[(m.device, m.batch)].round_p50 or []
            ratios = [a / max(b, 1e-6) for a, b in zip(ref_rounds, rounds)]
            if _spread(ratios) > ROUND_SPREAD:
                reasons.append(f"rounds disagree (speed-up {min(ratios):.3g}x to {max(ratios):.3g}x over "
                               f"{len(ratios)} rounds)")
        elif len(rounds) > 1 and _spread(rounds) > ROUND_SPREAD:
            reasons.append(f"rounds disagree (p50 {min(rounds):.3g} to {max(rounds):.3g} ms over {len(rounds)} "
                           "rounds)")
        if m.latency.p50 > m.latency.mean * P50_OVER_MEAN:
            reasons.append(f"p50 {m.latency.p50:.3g} ms above its mean {m.latency.mean:.3g} ms")
        larger = [o for o in results if o.label == m.label and o.device is m.device and o.batch > m.batch
                  and o.latency.p50 < m.latency.p50]
        if larger:
            o = min(larger, key=lambda o: o.latency.p50)
            reasons.append(f"batch {m.batch} p50 {m.latency.p50:.3g} ms above batch {o.batch}'s {o.latency.p50:.3g} ms")
        m.unstable = reasons
    for m in results:
        ref = base.get((m.device, m.batch))
        if ref is not None and ref is not m and ref.unstable:
            m.unstable.append("its PyTorch FP32 row is unstable")


def fastest_verified(results: list[Measurement]) -> None:
    """Per backend, device and batch: mark (``ship``) the fastest row whose artifact passed its tolerance
    (:func:`deploykit.manifest.verified`, the one "verified" test) -- what ``<- ship this`` names. Which artifact
    to ship per device, whatever its speed, is the report's question (``report.recommended_artifact``)."""
    best: dict[tuple, Measurement] = {}
    for m in results:
        if m.backend is Backend.torch or not verified(m.parity):
            continue
        key = (m.backend, m.device, m.batch)
        if key not in best or m.latency.p50 < best[key].latency.p50:
            best[key] = m
    for m in best.values():
        m.ship = True
