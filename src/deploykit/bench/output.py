"""A bench's outputs beside ``bench.json``: table rows and cells, the "ship this" lines, the markdown report and
the plot. The rich table is drawn under ``deploykit/cli/`` (``cli/render_bench.py``) from :func:`rows`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.bench.host import contention_warning
from deploykit.bench.options import Backend, Variant
from deploykit.bench.results import BenchReport, Skip, round_ratio
from deploykit.errors import InputError
from deploykit.files import atomic_path
from deploykit.parity import Precision
from deploykit.text import plain_plot_text, printable


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def shape_text(shape) -> str:
    return "x".join("N" if d is None else str(d) for d in shape or [])


def parity_cell(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "-"
    if parity.get("is_reference"):
        return "reference"
    bits = []
    if "top1_agreement" in parity:
        bits.append(f"top1 {parity['top1_agreement']:.3f}")
    if "cosine_min" in parity:
        bits.append(f"cos {parity['cosine_min']:.4f}")
    if "accuracy_drop" in parity:
        bits.append(f"drop {parity['accuracy_drop']:+.2f}")
    verdict = {True: "pass", False: "FAIL"}.get(parity.get("passed"), "")
    return " ".join(bits + [verdict]).strip()


def ratio_cell(value: float | None, span: list | tuple | None, stable: bool = True) -> str:
    """A speed-up as a table shows it: the median of rounds with the rounds' range; an unstable row's as its range
    only, marked, so no figure a quiet rerun would not reproduce reads as a result. Shared with ``report_page.py``."""
    if value is None:
        return "-"
    low, high = span if span else (value, value)
    if not stable:
        if high - low < 0.005 * max(abs(high), 1e-9):
            return "unstable" if abs(value - 1.0) < 1e-9 else f"unstable ({value:.3g}x)"
        return f"unstable ({low:.3g}-{high:.3g}x)"
    return f"{value:.2f}x" + (f" ({low:.2f}-{high:.2f})" if high - low >= 0.005 else "")


COLUMNS = ("backend", "precision", "variant", "device", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms",
           "img/s (p50)", "vs torch (p50)", "RSS peak MB", "RSS +MB", "GPU MB", "parity")


def rows(report: BenchReport) -> list[list[str]]:
    out = []
    for m in report.results:
        lat = m.latency
        out.append([m.backend.value, m.precision.value, m.variant.value, m.device.value, str(m.batch),
                    f"{lat.p50:.2f}", f"{lat.p90:.2f}", f"{lat.p99:.2f}", f"{lat.mean:.2f}", f"{m.throughput:.1f}",
                    ratio_cell(m.speedup_vs_torch, m.speedup_range, m.stable),
                    _fmt(m.rss_peak_mb, ".0f"), _fmt(m.rss_delta_mb, ".0f"), _fmt(m.gpu_mem_mb, ".0f"),
                    parity_cell(m.parity) + (" <- ship this" if m.ship else "")])
    return out


def ship_lines(report: BenchReport) -> list[str]:
    """One line per backend, device and batch: the fastest verified artifact, its p50 and its speed-up over ORT
    FP32 (ORT FP32's latency / its latency, per round, median of rounds: the table's direction, > 1 is faster)."""
    ort_fp32 = {(m.device, m.batch): m for m in report.results
                if m.backend is Backend.ort and m.precision is Precision.FP32}
    out = []
    for m in report.results:
        if not m.ship:
            continue
        ran = f", {m.ran['inference_precision']} hint" if m.ran and m.backend is Backend.ov else ""
        ref = ort_fp32.get((m.device, m.batch))
        ratio = ""
        if ref is not None and ref is not m:
            median, low, high = round_ratio(ref, m)
            ratio = (f", {ratio_cell(median, (low, high), m.stable and ref.stable)} the speed of ORT FP32"
                     if m.stable and ref.stable else f", speed vs ORT FP32 {ratio_cell(median, (low, high), False)}")
        out.append(f"ship this on {m.backend.value} ({m.device.value}, batch {m.batch}): {m.artifact} "
                   f"({m.precision.value}{ran}) -- p50 {m.latency.p50:.2f} ms{ratio}; {parity_cell(m.parity)}")
    return out


def unstable_lines(report: BenchReport) -> list[str]:
    """One line per unstable row: which and why (its figures are not results: rerun, quieter or --threads 1)."""
    return [f"{m.label} batch {m.batch}: {'; '.join(m.unstable)}" for m in report.results if m.unstable]


def write_markdown(report: BenchReport, dest: Path) -> Path:
    t = report.target
    lines = [f"# deploykit bench: {t.get('arch') or 'model'}", "",
             f"- host: {report.host_line}",
             f"- model: {t.get('source', t.get('folder'))} (input {shape_text(t.get('input'))}, "
             f"{t.get('num_classes')} classes)",
             f"- iterations: {', '.join(sorted({str(m.iters) for m in report.results})) or '-'} timed per row after "
             f"warm-up, in {max((len(m.round_p50 or ()) for m in report.results), default=0)} alternating rounds; "
             "latency per batch; img/s = batch / p50; `vs torch` = PyTorch eager FP32 p50 / this p50 (same "
             "device and batch) per round, the median of rounds (their range in brackets); `unstable`: rounds "
             "disagree, p50 above the mean or a smaller batch slower than a larger one -- not a result",
             "- RSS peak: the process's peak resident memory while the row loaded and ran its model (libraries "
             "included); RSS +MB: that peak minus the resident memory before loading",
             "- parity: what export/verify recorded for the artifact in deploykit.json (top-1 agreement and lowest "
             "cosine of the logits vs PyTorch, pass/FAIL against the precision's tolerance); ov rows: verified in "
             "this run, as they ran (variant = OpenVINO's inference precision)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i < 4 or i == len(COLUMNS) - 1 else "--:"
                                                              for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    unstable = unstable_lines(report)
    if unstable:
        lines += ["", "Unstable rows (their figures are not results; rerun when the host is quieter):", ""]
        lines += [f"- {line}" for line in unstable]
    busy = contention_warning(report.host)
    if busy:
        lines += ["", f"Warning: {busy}"]
    ship = ship_lines(report)
    if ship:
        lines += ["", "Ship this (fastest verified artifact per backend):", ""] + [f"- {line}" for line in ship]
    notes = sorted({f"{m.backend.value} {m.precision.value}: {m.note}" for m in report.results if m.note})
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    if report.skipped:
        lines += ["", "Skipped:", ""] + [f"- {skip_text(s)}" for s in report.skipped]
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return dest


def skip_text(skip: Skip) -> str:
    what = skip.backend.value + (f" {skip.precision.value}" if skip.precision else "") + \
        (f" batch {skip.batch}" if skip.batch is not None else "")
    return f"{what}: {skip.reason}"


def model_title(report: BenchReport) -> str:
    """The model a bench measured, as plot and table titles name it: architecture and where it came from."""
    t = report.target
    arch = t.get("arch") or "model"
    if t.get("bundled"):
        return f"{arch} (bundled, random weights)"
    where = t.get("artifact") or Path(str(t.get("source") or t.get("folder") or "")).name
    return f"{arch} ({where})" if where and where != arch else arch


def log_axis(axis) -> None:
    """A log scale labelled 1-2-5 in plain numbers. Labels are drawn with mathtext off (:func:`plain_plot_text`),
    where matplotlib's own log labels would read as raw ``$\\mathdefault{10^{-1}}$``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


@plain_plot_text
def write_plot(report: BenchReport, dest: Path) -> Path:
    """Latency per backend/precision at the smallest batch (bar: p50; whisker: p90 to p99, on a log axis when the
    values span more than a decade, so one slow row or outlier cannot flatten the rest), and throughput against
    batch size -- that panel only when more than one batch size was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not report.results:
        raise InputError("nothing was measured, so there is nothing to plot (see the skipped list)")
    batches = sorted({m.batch for m in report.results})
    smallest = batches[0]
    at = [m for m in report.results if m.batch == smallest]
    two = len(batches) > 1
    height = max(4.0, 0.55 * len(at) + 1.8)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(13 if two else 8, height), squeeze=False)
    ax_lat = axes[0][0]
    y = np.arange(len(at))[::-1]  # first row on top
    colors = [{"torch": "#ee4c2c", "ort": "#1f77b4", "ov": "#9467bd", "trt": "#76b900"}.get(m.backend.value, "#7f7f7f") for m in at]
    p50 = np.array([m.latency.p50 for m in at])
    p90 = np.array([m.latency.p90 for m in at])
    p99 = np.array([m.latency.p99 for m in at])
    ax_lat.barh(y, p50, color=colors, height=0.6, label="p50",
                hatch=["//" if m.unstable else "" for m in at])  # hatched: unstable
    ax_lat.errorbar(p50, y, xerr=[np.zeros_like(p50), np.maximum(p99 - p50, 0)], fmt="none", ecolor="black",
                    elinewidth=1, capsize=3, label="p50 to p99")
    ax_lat.scatter(p90, y, marker="|", s=120, color="black", zorder=3, label="p90")
    span = max(p99.max(), p50.max()) / max(p50.min(), 1e-6)
    if span > 10:
        log_axis(ax_lat.xaxis)
    ax_lat.set_xlim(right=max(p99.max(), p50.max()) * (3.0 if span > 10 else 1.25))
    for yi, m in zip(y, at):
        p = m.latency.p50
        text = f" {p:.3g} ms" if p < 1000 else f" {p:,.0f} ms"
        if m.unstable:
            text += "  unstable: not a result"
        elif m.speedup_vs_torch and not (m.backend is Backend.torch and m.precision is Precision.FP32
                                         and m.variant is Variant.eager):
            text += f"  {m.speedup_vs_torch:.2f}x vs torch"
        ax_lat.text(max(m.latency.p99, m.latency.p50), yi, text, va="center", fontsize=8)
    ax_lat.set_yticks(y, [m.label for m in at], fontsize=9)
    ax_lat.set_xlabel("latency per batch, ms" + (" (log scale)" if span > 10 else ""))
    ax_lat.set_title(f"latency at batch {smallest} on {at[0].device.value}: bar p50, whisker to p99, | p90",
                     fontsize=9)
    ax_lat.grid(axis="x", alpha=0.3, which="both")
    if two:
        ax_thr = axes[0][1]
        for label in dict.fromkeys(m.label for m in report.results):
            pts = sorted((m.batch, m.throughput) for m in report.results if m.label == label)
            shaky = any(m.unstable for m in report.results if m.label == label)
            ax_thr.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=label + (" (unstable)" if shaky else ""), linestyle="--" if shaky else "-")
        ax_thr.set_xscale("log", base=2)
        ax_thr.set_xticks(batches, [str(b) for b in batches])
        ax_thr.set_xlabel("batch")
        ax_thr.set_ylabel("images / s (batch / p50)")
        ax_thr.set_title("throughput vs batch", fontsize=9)
        ax_thr.legend(fontsize=8)
        ax_thr.grid(alpha=0.3)
    fig.suptitle(f"{printable(model_title(report))}, input {shape_text(report.target.get('input'))}: deploykit bench",
                 fontsize=11, fontweight="bold")
    fig.text(0.5, 0.005, report.host_line, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return dest
