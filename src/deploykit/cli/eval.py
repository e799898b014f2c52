"""`deploykit eval`: top-1 / top-5 accuracy and a confusion-matrix PNG on labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from deploykit.cli.app import app
from deploykit.cli.options import (AllowPickleOpt, ArchOpt, InputShapeOpt, LabelsOpt, MeanOpt, ModelDefOpt,
                                   ModelKwargsOpt, NumClassesOpt, StdOpt, load_options)
from deploykit.cli.messages import ConsoleReporter
from deploykit.errors import InputError
from deploykit.evaluate import default_plot_path, evaluate_model, plot_confusion
from deploykit.files import dumps_strict
from deploykit.cli.render import console, err_console, literal


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Argument(help="Checkpoint, .onnx file, or export folder.")],
    data: Annotated[str, typer.Option("--data", help="Labelled ImageFolder (<class>/*.png), or a bundled dataset "
                                                     "(digits, mnist, fashionmnist, cifar10): its held-out split.")],
    as_json: Annotated[bool, typer.Option("--json", help='Print {"top1", "top5", "n"} (percent) on stdout.')] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Confusion-matrix PNG \\[default: <folder>/"
                                                                "confusion.png or <model>.confusion.png].")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Where MNIST / FashionMNIST / CIFAR10 "
                                                                          "files are.")] = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    model_def: ModelDefOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    allow_pickle: AllowPickleOpt = False,
    input_shape: InputShapeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    labels: LabelsOpt = None,
) -> None:
    """Accuracy of a checkpoint or an exported artifact on labelled images, with a confusion matrix."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    if plot is not None and plot.is_dir():
        raise InputError(f"--plot {plot} is a folder; give a file name such as {plot / 'confusion.png'}")
    options = load_options(arch, num_classes, model_def, model_kwargs, allow_pickle, input_shape, mean, std, None,
                           labels)
    reporter = ConsoleReporter(err_console, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    report = evaluate_model(model, data, data_root=data_root, options=options, reporter=reporter)
    png = plot_confusion(report, plot or default_plot_path(model))
    if as_json:
        print(dumps_strict(report.to_json()))
        return
    table = Table(title=f"{literal(model)} on {literal(report.data)}", title_justify="left")
    for column in ("images", "top-1 %", f"top-{report.k} %"):
        table.add_column(column, justify="right")
    table.add_row(str(report.n), f"{report.top1:.2f}", f"{report.top5:.2f}")
    console.print(table)
    worst = [row for row in sorted(report.per_class(), key=lambda row: row[2]) if row[2] < 100.0][:5]
    if worst:
        console.print("classes found least often (recall: share of a class's images predicted as that class): "
                      + "; ".join(f"class {literal(repr(str(name)) if str(name).isdigit() else name)}: "
                                  f"{round(recall * n / 100)} of {n} ({recall:.1f}%)"
                                  for name, n, recall in worst), highlight=False, soft_wrap=True)
    console.print(f"confusion matrix: {literal(png)}", highlight=False)
