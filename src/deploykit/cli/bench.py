"""`deploykit bench`: latency and throughput of each artifact against the PyTorch reference."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.bench import (Backend, BenchOptions, bench_target, default_backends, default_target, parse_batches,
                             parse_list, ship_lines, skip_text, unstable_lines, write_markdown, write_plot)
from deploykit.bench.host import contention_warning
from deploykit.bench.run import keep_results
from deploykit.cli.app import app
from deploykit.cli.options import MaxImagesOpt, check_max_images
from deploykit.cli.render import console, err_console, literal, note, warn
from deploykit.cli.render_bench import bench_table
from deploykit.cli.messages import ConsoleReporter
from deploykit.errors import InputError
from deploykit.files import dumps_strict
from deploykit.parity import Precision
from deploykit.runners.base import Device


@app.command()
def bench(
    target: Annotated[Optional[Path], typer.Argument(help="Export folder, one artifact in it (model.fp16.onnx, "
                                                          "model.fp16.engine: that one beside PyTorch FP32), or a "
                                                          "model file (exported on the fly into a temporary folder) "
                                                          "\\[default: the most recently written export folder "
                                                          "under ./exports/, whose bench.json and bench.png are then "
                                                          "written (for `deploykit report`); else a bundled "
                                                          "ResNet-18 with random weights].")] = None,
    backends: Annotated[Optional[str], typer.Option("--backends", help="Comma list of torch,ort,ov,trt \\[default: "
                                                                      "all; ov where OpenVINO is installed].")] = None,
    precisions: Annotated[str, typer.Option("--precisions", help="Comma list of fp32,fp16,int8,int8-cpu,bf16 (bf16: "
                                                                 "model.onnx computed in bf16 by OpenVINO).")]
    = "fp32,fp16,int8,int8-cpu,bf16",
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, e.g. 1,8,32.")] = "1",
    device: Annotated[Device, typer.Option("--device", help="Where to run.")] = Device.cpu,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Intra-op threads for PyTorch and ONNX "
                                                                     "Runtime alike \\[default: all cores].")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed iterations first.")] = 5,
    iters: Annotated[Optional[int], typer.Option("--iters", help="Timed iterations \\[default: 100, fewer (>= 10) "
                                                                 "once 15 s have passed].")] = None,
    seconds: Annotated[Optional[float], typer.Option("--seconds", help="Time each case for this long instead "
                                                                       "of --iters.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Images each row's parity is judged on: a folder, or "
                                                              "digits \\[default: the folder's evidence, against "
                                                              "PyTorch's logits recorded at export].")] = None,
    max_images: MaxImagesOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {host, results} JSON on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG: latency per backend/precision, "
                                                                "throughput vs batch.")] = None,
    md: Annotated[Optional[Path], typer.Option("--md", help="Write a markdown report.")] = None,
    torch_variants: Annotated[bool, typer.Option("--torch-variants", help="Also PyTorch channels_last (+FP16 "
                                                                          "autocast on CUDA) and torch.compile.")]
    = False,
) -> None:
    """Time every backend and precision on this machine, beside PyTorch eager FP32 and the artifact's parity."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    options = _options(backends, precisions, batch, device, threads, warmup, iters, seconds, torch_variants, data,
                       max_images)
    for path, flag in ((plot, "--plot"), (md, "--md")):
        if path is not None and path.is_dir():
            raise InputError(f"{flag} {path} is a folder; give a file name")
    chosen = target is None  # bare `deploykit bench` on your latest export: results kept beside it
    if chosen:  # say what is benched on the first line (stderr under --json: stdout is the JSON)
        target, said = default_target()
        (err_console if as_json else console).print(literal(said), highlight=False, soft_wrap=True)

    # No auto-refresh: a redraw thread would take CPU from the runs being timed; the bar moves between cases.
    reporter = ConsoleReporter(err_console, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               auto_refresh=False)
    report = bench_target(target, options, reporter=reporter)
    busy = contention_warning(report.host)
    if busy:
        warn(busy)
    _show(report, as_json)
    kept = keep_results(report, target, chosen=chosen, plot=plot)
    _say_kept(kept, target, as_json=as_json, md=md)
    if kept.plot is not None:
        write_plot(report, kept.plot)
        err_console.print(f"wrote {literal(kept.plot)}", highlight=False)
    if md is not None:
        write_markdown(report, md)
        err_console.print(f"wrote {literal(md)}", highlight=False)
    if not report.results:
        raise InputError("nothing could be measured here: see the skipped list")


def _options(backends, precisions, batch, device, threads, warmup, iters, seconds, torch_variants, data, max_images):
    """The command's flags as checked :class:`~deploykit.bench.BenchOptions`."""
    options = BenchOptions(backends=default_backends() if backends is None else parse_list(backends, Backend,
                                                                                           "--backends"),
                           precisions=parse_list(precisions, Precision, "--precisions"),
                           batches=parse_batches(batch), device=device, threads=threads, warmup=warmup,
                           iters=iters, seconds=seconds, torch_variants=torch_variants, data=data,
                           max_images=check_max_images(max_images))
    options.validate()
    return options


def _show(report, as_json: bool) -> None:
    """The results: JSON on stdout (--json), else the table, the host, unstable rows, what to ship, skips, notes."""
    from rich.markup import escape

    if as_json:
        print(dumps_strict(report.to_json()))
        return
    console.print(bench_table(report))
    console.print(f"host: {escape(report.host_line)}", highlight=False, soft_wrap=True)
    for line in unstable_lines(report):
        console.print(f"[yellow]unstable[/] {escape(line)}", highlight=False, soft_wrap=True)
    for line in ship_lines(report):
        console.print(f"[bold]{escape(line)}[/]", highlight=False, soft_wrap=True)
    for skip in report.skipped:
        console.print(f"[dim]skipped[/] {literal(skip_text(skip))}", highlight=False, soft_wrap=True)
    for line in sorted({f"{m.backend.value} {m.precision.value}: {m.note}" for m in report.results if m.note}):
        console.print(f"[dim]note[/] {literal(line)}", highlight=False, soft_wrap=True)


def _say_kept(kept, target, *, as_json: bool, md) -> None:
    """Where the record went: bench.json kept beside the export, or an earlier bench.json left as it was (unless
    stdout is being redirected into it)."""
    if kept.json is not None:
        err_console.print(f"wrote {literal(kept.json)} (`deploykit report {literal(kept.json.parent)}` puts it in "
                          "report.md)", highlight=False)
    elif kept.earlier is not None and not _stdout_is(kept.earlier):
        note(f"results went to {'stdout (--json)' if as_json else 'this screen'}"
             + "".join(f" and {p}" for p in (kept.plot, md) if p is not None)
             + f"; {kept.earlier} is an earlier bench and was left as it was -- `deploykit report` "
             f"reads that one: `deploykit bench {target} --json > {kept.earlier}` to replace it")


def _stdout_is(path: Path) -> bool:
    """Whether stdout is redirected into ``path`` (``deploykit bench DIR --json > DIR/bench.json``)."""
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (a test runner's capture)
        return False
