"""The rich table of a bench (`deploykit bench` without --json); its cells come from ``deploykit.bench.output``."""

from __future__ import annotations

from rich.table import Table

from deploykit.cli.render import literal

from deploykit.bench.options import Variant
from deploykit.bench.results import BenchReport
from deploykit.bench.output import COLUMNS, model_title, rows, shape_text


def bench_table(report: BenchReport) -> Table:
    """Columns that carry nothing on this run (no GPU memory, only plain variants, one device, named in the title
    instead) are left out."""
    target = report.target
    body = rows(report)
    devices = sorted({m.device.value for m in report.results})
    drop = set()
    if all(r[COLUMNS.index("GPU MB")] == "-" for r in body):
        drop.add("GPU MB")
    if all(m.variant in (Variant.eager, Variant.session) for m in report.results):
        drop.add("variant")
    if len(devices) == 1:
        drop.add("device")
    keep = [i for i, col in enumerate(COLUMNS) if col not in drop]
    on = f" on {devices[0]}" if len(devices) == 1 else ""
    # the host line is printed on its own line (soft-wrapped, never broken by rich): see `deploykit bench`
    title = f"{model_title(report)} {shape_text(target.get('input'))}{on}"
    table = Table(title=literal(title), title_justify="left",
                  caption="img/s = batch / p50; vs torch = PyTorch eager FP32 p50 / this p50 in each timing "
                          "round, the median of rounds (their range in brackets; unstable: not a result, see "
                          "below); parity: as recorded in deploykit.json by export/verify (vs PyTorch), ov rows "
                          "verified in this run", caption_justify="left")
    for i in keep:
        col = COLUMNS[i]
        table.add_column(col, justify="left" if col in ("backend", "precision", "variant", "device",
                                                         "parity") else "right", no_wrap=col != "parity")
    for row in body:
        table.add_row(*[literal(row[i]) for i in keep])
    return table


def parity_basis(report) -> str:
    """What the parity column was judged on: the images and the reference, from the rows' verdicts."""
    seen = sorted({(p.get("n_images"), str(p.get("data") or "the export's verification images"), p.get("reference"))
                   for p in (m.parity for m in report.results) if p and not p.get("is_reference")},
                  key=str)
    if not seen:
        return "no verdicts"
    return "; ".join(f"on {n} images of {data} vs {ref}" for n, data, ref in seen) + \
        " (ort/trt rows: the verdict export or build recorded on the same images; ov rows: judged in this run)"
